"""A real Orthanc PACS for the tests (Debian packages ``orthanc`` and ``orthanc-dicomweb``).

:func:`start_orthanc` runs Orthanc on 127.0.0.1 with a temporary storage directory, the
DICOMweb plugin, HTTP basic authentication (:data:`USER`/:data:`PASSWORD`) and no DICOM port.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

USER, PASSWORD = "rankiq", "test-password"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def orthanc_binary() -> str | None:
    """The Orthanc executable, or ``None``."""
    return shutil.which("Orthanc") or shutil.which("orthanc")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin library, or ``None``."""
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: ``url`` (REST), ``dicomweb`` (DICOMweb root), ``proc``."""

    url: str
    dicomweb: str
    proc: subprocess.Popen
    auth: tuple[str, str] = (USER, PASSWORD)

    def upload(self, path: Path) -> dict:
        """Store one DICOM file through the REST API (``POST /instances``)."""
        r = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth,
                          timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, route: str) -> object:
        r = requests.get(f"{self.url}{route}", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def delete(self, route: str) -> None:
        requests.delete(f"{self.url}{route}", auth=self.auth, timeout=30).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_orthanc(root: Path, *, lua: Path | None = None, extra: dict | None = None,
                  env: dict[str, str] | None = None, port: int | None = None) -> Orthanc:
    """Start Orthanc with its storage under ``root`` and wait until it answers.

    Args:
        root: a fresh directory (storage, index, config, log), or the ``root`` of a stopped
            Orthanc to start again on its storage.
        lua: a Lua script to load (``LuaScripts``).
        extra: more configuration entries.
        env: Orthanc's environment (``{url}`` in a value becomes its REST URL).
        port: the HTTP port (default: a free one), e.g. a stopped Orthanc's, for the same URL.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "Name": "rankiq-test", "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"), "HttpPort": port, "DicomPort": 0,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD}, "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1,
        "HttpTimeout": 60, "ExecuteLuaEnabled": False,
        **({"LuaScripts": [str(lua)]} if lua else {}), **(extra or {}),
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    proc = subprocess.Popen([orthanc_binary() or "Orthanc", str(root / "orthanc.json")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            env=None if env is None else
                            {k: v.replace("{url}", url) for k, v in env.items()})
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("Orthanc did not start: " + (root / "orthanc.log").read_text()
                               [-2000:])
        time.sleep(0.1)
    return Orthanc(url, f"{url}/dicom-web", proc)
