"""`make run`'s broker keeps its data in a folder and finds it again: formatted once (the same
cluster id), on the ports it had when they are free, on new ones (remembered) when they are not.
Starting it on kept data after a hard kill is tests/contacts_dev/test_make_run.py's."""

from __future__ import annotations

import socket

from contacts_dev.embedded_kafka import KraftBroker


def test_a_kept_folder_is_formatted_once_and_keeps_its_ports_while_free(tmp_path):
    data = tmp_path / "kafka"
    first = KraftBroker(log_dir=tmp_path, data_dir=data)
    first.close()  # a kept folder stays
    cluster_id = first.cluster_id
    assert cluster_id and (data / "logs" / "meta.properties").exists()

    again = KraftBroker(log_dir=tmp_path, data_dir=data)
    assert (again.port, again.controller_port, again.cluster_id) == (first.port, first.controller_port, cluster_id)

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        moved = KraftBroker(log_dir=tmp_path, data_dir=data)
    assert moved.port != first.port and moved.bootstrap_servers == f"127.0.0.1:{moved.port}"
    assert f"advertised.listeners=PLAINTEXT://127.0.0.1:{moved.port}" in (data / "server.properties").read_text()
    assert moved.cluster_id == cluster_id

    remembered = KraftBroker(log_dir=tmp_path, data_dir=data)
    assert remembered.port == moved.port

