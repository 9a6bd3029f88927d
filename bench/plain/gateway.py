"""Plain gateway: ``@http`` routes calling person over Nameko RPC, JSON answers."""

import json

from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response


def _json(body, status=200):
    return Response(json.dumps(body), status=status, mimetype="application/json")


class PlainGatewayService:
    name = "gateway"

    person = RpcProxy("person")

    @http("POST", "/person")
    def create_person(self, request):
        return _json(self.person.create_person(json.loads(request.get_data(as_text=True))), 201)

    @http("POST", "/person/<cpf>/income")
    def add_income(self, request, cpf):
        return _json(self.person.add_income(cpf, json.loads(request.get_data(as_text=True))), 201)

    @http("GET", "/health")
    def health(self, request):
        return _json({"status": "ok"})
