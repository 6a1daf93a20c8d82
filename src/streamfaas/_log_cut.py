"""The line a watchdog writes where it cut a function's log back (``watchdog.function_process.bound_log``),
which the gateway's log reader looks for (``provider.logs``). A leaf module: the watchdog
imports it without the provider package (pydantic and the rest), which every watchdog would
otherwise hold in memory."""

CUT_MARK = b" streamfaas: the log passed "
