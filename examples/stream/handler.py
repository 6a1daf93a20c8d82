"""Streams a fixed answer as Server-Sent Events, one word per event (no model needed)."""

import json
import time

from flask import Response

ANSWER = (
    "Calorie dense foods pack a lot of energy into a small serving. Good examples are nuts "
    "and nut butters, seeds, olive oil, avocados, cheese, dried fruit such as dates and "
    "raisins, dark chocolate, granola, whole milk, and fatty fish like salmon."
)


def handle(req):
    delay = 0.05

    def events():
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            yield f"data: {json.dumps({'content': text})}\n\n"
            time.sleep(delay)
        yield "event: done\ndata: {}\n\n"

    return Response(events(), mimetype="text/event-stream")
