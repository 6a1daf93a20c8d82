"""streamfaas: functions whose responses stream end to end."""

__version__ = "0.1.0"
