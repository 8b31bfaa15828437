"""The OpenAPI 3 document served at /openapi.json."""

OPENAPI: dict = {"openapi": "3.0.3", "info": {"title": "contacts-streams", "version": "0.1.0"}, "paths": {}}
