from .cli import llm_command

llm_command(prog_name="streamfaas llm")
