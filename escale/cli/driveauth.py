"""``escalectl drive-auth [-r NAME] [--headless] [--no-browser]``: let escale use Google Drive.

Runs Google's installed-app OAuth flow (google-auth-oauthlib, the library Google keeps for
it) for each selected ``gdrive://`` repository, with the OAuth client named by its
``client secrets`` option, and keeps the token 0600 in the repository's state folder
(``gdrive-token.json``, or ``token file``):

- by default a one-time listener on 127.0.0.1 receives Google's redirect (the loopback
  flow); the address to open is printed, and opened in a browser unless ``--no-browser``;
- ``--headless`` (a machine without a browser): the address is printed, the user opens it
  anywhere, then pastes the address the browser ended on (``http://127.0.0.1:…/?code=…``,
  which fails to load there) or just the code.

Then the relay is opened with the new token to check it works. Scopes: ``drive.file``, or
``drive.appdata`` with ``app data folder = yes`` — nothing else.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import EXIT_OK, AuthenticationError, ConfigError
from ..private import private_dir

#: the loopback port of the headless flow's redirect (nothing listens there: the user copies it)
HEADLESS_PORT = 8085


def add_parser(sub) -> None:
    p = sub.add_parser("drive-auth", help="authorize escale to use Google Drive (gdrive:// relays)")
    p.add_argument("-r", "--repository", action="append", default=[], metavar="NAME")
    p.add_argument("--headless", action="store_true",
                   help="print an address to open elsewhere and paste back where the browser ended")
    p.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")
    p.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: any free one)")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _code_from(answer: str, state: str) -> str:
    answer = answer.strip()
    if "://" in answer or answer.startswith("/?") or answer.startswith("?"):
        query = parse_qs(urlsplit(answer).query if "://" in answer else answer.split("?", 1)[1])
        if "error" in query:
            raise AuthenticationError(f"Google refused the authorization: {query['error'][0]}")
        if query.get("state", [state])[0] != state:
            raise AuthenticationError("the pasted address belongs to another authorization request "
                                      "(its state differs); run escalectl drive-auth again")
        if "code" not in query:
            raise AuthenticationError("the pasted address holds no 'code'; paste the whole address the "
                                      "browser ended on")
        return query["code"][0]
    if not answer:
        raise AuthenticationError("no code given")
    return answer


def _flow_credentials(relay, secrets: str, args):
    from google_auth_oauthlib.flow import InstalledAppFlow

    try:
        flow = InstalledAppFlow.from_client_secrets_file(secrets, scopes=[relay.scope])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot use the OAuth client file {secrets}: {exc} (download the 'Desktop app' "
                          "client JSON from the Google Cloud console, see docs/relays.md)",
                          option="client secrets") from None
    if args.headless:
        flow.redirect_uri = f"http://127.0.0.1:{args.port or HEADLESS_PORT}/"
        url, state = flow.authorization_url(access_type="offline", prompt="consent")
        print("Open this address in a browser (on any computer) and allow escale to use Google Drive:")
        print(url, flush=True)
        print("The browser then ends on a page that does not load (http://127.0.0.1:…/?…code=…).")
        answer = input("Paste that page's whole address (or just the code): ")
        flow.fetch_token(code=_code_from(answer, state))
        return flow.credentials
    return flow.run_local_server(
        host="127.0.0.1", port=args.port, open_browser=not args.no_browser,
        authorization_prompt_message="Open this address in a browser and allow escale to use Google Drive:\n{url}",
        success_message="escale may now use Google Drive. You can close this page.",
        access_type="offline", prompt="consent")


def cmd_drive_auth(cfg, args) -> int:
    from ..relay.gdrive import TOKEN_NAME, GoogleDrive
    from .daemon import select

    repos = [r for r in select(cfg, args.repository) if r.relay_protocol in GoogleDrive.schemes]
    if not repos:
        raise ConfigError("no repository here uses a Google Drive relay (relay address = gdrive:///…)",
                          path=cfg.path)
    for repo in repos:
        relay = GoogleDrive(repo.relay_url, repository=repo.name, **repo.options)
        if relay.service_account:
            print(f"{repo.name}: uses the service account key {relay.service_account}; nothing to authorize")
            continue
        if not relay.client_secrets:
            raise ConfigError("set 'client secrets' to the OAuth client file ('Desktop app') downloaded from the "
                              "Google Cloud console (docs/relays.md, 'Setting it up')", path=repo.config_path,
                              section=repo.name, option="client secrets")
        state, _marker = repo.identity().resolve()
        private_dir(state)
        relay.use_state_dir(state, repo.name)
        path = relay.token_path() or state / TOKEN_NAME
        try:
            creds = _flow_credentials(relay, relay.client_secrets, args)
        except (ConfigError, AuthenticationError):
            raise
        except Exception as exc:  # noqa: BLE001 - oauthlib's and the network's, told plainly
            detail = getattr(exc, "description", None) or getattr(exc, "error", None) or exc
            raise AuthenticationError(f"{repo.name}: the Google authorization did not complete: "
                                      f"{type(exc).__name__}: {detail}") from None
        info = json.loads(creds.to_json())
        info.setdefault("scopes", [relay.scope])
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(info))
        relay.open()  # the token works and the relay folder is there (created if missing)
        relay.close()
        print(f"{repo.name}: authorized for {relay.scope}; token kept in {path} (mode 0600)")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: escalectl drive-auth")
