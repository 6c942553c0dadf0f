"""Kafka SASL/TLS settings reach aiokafka's clients (producer, consumer, admin) as configured."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from service.kafka import client_options
from service.settings import Settings
from tests.conftest import load_services


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"SEGMENTS_KAFKA__{name.upper()}", value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed (scripts/install.sh)"
    made: dict[str, Path] = load_services()._make_certificates(
        openssl, tmp_path_factory.mktemp("kafka-tls") / "tls"
    )
    return made


def test_plaintext_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = client_options(_settings(monkeypatch).kafka)
    assert opts["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in opts
    assert "sasl_mechanism" not in opts


async def test_sasl_ssl_with_a_private_ca_reaches_every_client(
    monkeypatch: pytest.MonkeyPatch, certificates: dict[str, Path]
) -> None:
    kafka = _settings(
        monkeypatch,
        bootstrap="broker-1:9093,broker-2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="segments",
        sasl_password="s3cret",
        ssl_cafile=str(certificates["ca"]),
        ssl_certfile=str(certificates["cert"]),
        ssl_keyfile=str(certificates["key"]),
    ).kafka
    assert "s3cret" not in repr(kafka)  # a SecretStr: never logged

    opts = client_options(kafka)
    context = opts["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # Only the configured CA is trusted (not the system store).
    (ca,) = context.get_ca_certs()
    assert (("commonName", "segments-test-ca"),) in ca["subject"]

    producer = AIOKafkaProducer(**opts)
    consumer = AIOKafkaConsumer(**opts, group_id="g")
    admin = AIOKafkaAdminClient(**opts)
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "segments"
        assert client._sasl_plain_password == "s3cret"
        assert client._ssl_context is context
    await producer.stop()
    await consumer.stop()
    await admin.close()


def test_hostname_check_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = _settings(monkeypatch, security_protocol="SSL", ssl_check_hostname="false").kafka
    context = client_options(kafka)["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


def test_unknown_sasl_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        _settings(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="KERBEROS5")
