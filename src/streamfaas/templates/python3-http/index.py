"""python3-http: handle(event, context) returns a dict with statusCode/body/headers, or a Flask
Response (which may stream)."""

import os

from flask import Flask, Response, request
from streamfaas_serve import serve_app, text_errors

from function import handler

app = Flask(__name__)
text_errors(app)  # a handler's exception: 500 with one line of text
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


class Event:
    def __init__(self):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = request.path


class Context:
    def __init__(self):
        self.hostname = os.environ.get("HOSTNAME", "localhost")


def format_response(res):
    if isinstance(res, Response):
        return res
    if res is None:
        return ("", 200)
    if not isinstance(res, dict):
        return res
    status = res.get("statusCode", 200)
    headers = res.get("headers") or {}
    body = res.get("body", "")
    if isinstance(body, (dict, list)):
        from flask import json

        body = json.dumps(body)
        headers = {"Content-Type": "application/json", **headers}
    return (body, status, headers)


@app.route("/_/health", methods=["GET"])
def health():
    return "OK\n"


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def call_handler(path):
    return format_response(handler.handle(Event(), Context()))


if __name__ == "__main__":
    serve_app(app)
