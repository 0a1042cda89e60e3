"""HTTPS upstreams: certificates verified against the system CAs or ``ca_file``, host name
checked (``server_hostname`` when the URL names an address), ``verify: false`` to opt out.

The CA and the server certificate are made for each test session with the ``openssl`` CLI;
the upstream is a raw-socket TLS server on loopback.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config
from tests.conftest import one_model_config
from tests.raw_upstream import answer, post, sends

CHAT = "/v1/chat/completions"
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _server_cert(tmp: Path, name: str, san: str) -> tuple[Path, Path]:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp)
    (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
             f"{name}.ext", cwd=tmp)
    return tmp / f"{name}.pem", tmp / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA, a certificate for 127.0.0.1 and one for the name llm.internal only."""
    tmp = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj",
             "/CN=llm-throttle test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp)
    ip_cert, ip_key = _server_cert(tmp, "ip", "IP:127.0.0.1")
    name_cert, name_key = _server_cert(tmp, "named", "DNS:llm.internal")
    return {"ca": tmp / "ca.pem", "ip_cert": ip_cert, "ip_key": ip_key,
            "name_cert": name_cert, "name_key": name_key}


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def tls_proxy(raw_upstream, make_proxy, cert: Path, key: Path, **tls: object):
    upstream = await raw_upstream(sends(answer(200, b'{"ok": true}')),
                                  tls=server_tls(cert, key))
    config = one_model_config(upstream.url, max_in_flight=1)
    config["upstreams"]["up"].update(tls)
    return await make_proxy(config)


async def test_https_upstream_verified_with_ca_file(raw_upstream, make_proxy, pki):
    """Hazard: an https upstream signed by a private CA could not be reached at all (only
    the system CAs were trusted), pushing operators to plain HTTP."""
    proxy = await tls_proxy(raw_upstream, make_proxy, pki["ip_cert"], pki["ip_key"],
                            ca_file=str(pki["ca"]))
    for _ in range(2):  # the second one on the pooled TLS connection
        assert (await post(proxy.url + CHAT))[::2] == (200, b'{"ok": true}')


async def test_https_upstream_with_an_unknown_ca_is_refused(raw_upstream, make_proxy, pki):
    """Kept: without the CA the certificate is not trusted: 502 naming the TLS failure."""
    proxy = await tls_proxy(raw_upstream, make_proxy, pki["ip_cert"], pki["ip_key"])
    status, _, body = await post(proxy.url + CHAT)
    assert status == 502 and b"TLS handshake failed" in body


async def test_verify_false_skips_verification(raw_upstream, make_proxy, pki):
    """Hazard: no way to reach an https upstream with a self-made certificate on a trusted
    network short of editing code."""
    proxy = await tls_proxy(raw_upstream, make_proxy, pki["ip_cert"], pki["ip_key"],
                            verify=False)
    assert (await post(proxy.url + CHAT))[::2] == (200, b'{"ok": true}')


async def test_server_hostname_names_the_certificate(raw_upstream, make_proxy, pki):
    """Hazard: an upstream addressed by IP whose certificate names a host could not be
    verified; ``server_hostname`` gives the name for SNI and the check."""
    proxy = await tls_proxy(raw_upstream, make_proxy, pki["name_cert"], pki["name_key"],
                            ca_file=str(pki["ca"]), server_hostname="llm.internal")
    assert (await post(proxy.url + CHAT))[::2] == (200, b'{"ok": true}')
    wrong = await tls_proxy(raw_upstream, make_proxy, pki["name_cert"], pki["name_key"],
                            ca_file=str(pki["ca"]))
    status, _, body = await post(wrong.url + CHAT)
    assert status == 502 and b"TLS handshake failed" in body


@pytest.mark.parametrize("url,tls,problem", [
    ("http://127.0.0.1:1", {"ca_file": "/etc/hosts"}, "ca_file: only for an https:// url"),
    ("http://127.0.0.1:1", {"verify": False}, "verify: only for an https:// url"),
    ("https://127.0.0.1:1", {"ca_file": "/nonexistent/ca.pem"}, "ca_file: no such file"),
    ("https://127.0.0.1:1", {"verify": "yes"}, "verify: expected true or false"),
])
def test_tls_settings_are_validated(url, tls, problem):
    config = one_model_config(url)
    config["upstreams"]["up"].update(tls)
    with pytest.raises(ConfigError) as raised:
        parse_config(config, environ={})
    assert problem in str(raised.value)
