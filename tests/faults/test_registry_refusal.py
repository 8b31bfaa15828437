"""`python -m api` against a real schema registry whose subject refuses the contact schema:
the process ends at start with a message an operator can act on, instead of never becoming ready."""

from __future__ import annotations

import json

from faultkit import wait_for


def test_the_process_exits_at_start_naming_the_subject_that_refuses_the_schema(names, spawn, schema_registry):
    subject = f"{names.contacts_topic}-value"
    schema = {"type": "record", "name": "Contact", "namespace": "co.airy.avro.contacts", "fields": [{"name": "id", "type": "long"}]}
    assert schema_registry.request("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})[0] == 200
    assert schema_registry.request("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})[0] == 200

    process = spawn(names, KAFKA_SCHEMA_REGISTRY_URL=schema_registry.url)
    wait_for(lambda: not process.running(), 90, "the service to exit")
    assert process.proc.returncode == 3  # the boot-error halt of either server: the platform sees a failed start
    said = [line for line in process.tail(200).splitlines() if line.startswith("contacts-streams cannot start:")]
    assert said, process.tail()
    assert subject in said[0] and "incompatible" in said[0] and "409" in said[0]
    wait_for(lambda: not process.group_pids(), 30, "the worker to go too")
