"""python3-flask: handle(req) gets the request body; whatever it returns, Flask turns into the
response, including Response(generator) for a stream."""

import os

from flask import Flask, request
from streamfaas_serve import serve_app, text_errors

from function import handler

app = Flask(__name__)
text_errors(app)  # a handler's exception: 500 with one line of text
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
RAW_BODY = os.environ.get("RAW_BODY", "false").lower() in ("1", "true", "yes")


@app.route("/_/health", methods=["GET"])
def health():
    return "OK\n"


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def call_handler(path):
    return handler.handle(request.get_data(as_text=not RAW_BODY))


if __name__ == "__main__":
    serve_app(app)
