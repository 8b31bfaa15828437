"""Fixtures of the stream-stage tests."""

from __future__ import annotations

import pytest
from streamkit import Airy


@pytest.fixture
def airy(kafka, make_config, new_topic):
    """The platform's messages and metadata topics of this test, and a producer of Airy records."""
    config = make_config(auto_create_enabled=True)
    new_topic(config.messages_topic.split(".", 1)[1], partitions=4)
    new_topic(config.metadata_topic.split(".", 1)[1], partitions=2)
    return Airy(kafka, config)
