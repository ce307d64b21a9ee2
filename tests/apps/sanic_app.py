"""A real Sanic application, started by qasup in tests: its own 'Starting worker' line is the readiness marker."""

import sys

from sanic import Sanic
from sanic.response import json

app = Sanic("qasup_test_app")


@app.get("/api/health")
async def health(request):
    return json({"status": "ok"})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False, motd=False)
