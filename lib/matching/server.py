"""The web page of ``match.py serve``: upload or record a clip, see the catalogue's closest
tracks with their distance, the verdict, where the clip and the track match, and players that
start there; a catalogue summary page; the same answers as JSON.

    GET  /                 the page (upload form, recorder)
    POST /query            multipart form, field ``clip``: the result page (``?format=json``:
                           JSON, as ``match.py query --json`` writes one clip)
    GET  /compare          two uploads: are they versions, and where do they meet?
    POST /compare          multipart form, fields ``a`` and ``b``: the verdict, the matched
                           ranges and the picture of their window distances (``?format=json``:
                           JSON, as ``match.py compare --json`` writes it)
    GET  /picture/T/N      the picture of uploaded clip T against catalogue track N (a query
                           result's, from the windows the catalogue holds)
    GET  /catalogue        summary: tracks, windows, index, calibration (and its plot)
    GET  /audio/track/N    the audio of catalogue track N (row), for the players
    GET  /audio/clip/T     an uploaded clip (token T), for the players
    GET  /calibration.png  the calibration plot, when there is one

Safety: the server binds to 127.0.0.1 unless told otherwise; an upload is refused above
``max_upload_bytes`` (checked while it arrives, not after), unless its name has an audio
extension, or when it does not decode as audio; it is kept under a private temporary folder
with a name the server makes (the user's file name is never used as a path), and only the last
``keep_clips`` uploads are kept. The only files served are the catalogue's own tracks (by row)
and those uploads (by token). Errors are pages (or JSON) with a message, never a traceback.
Queries are answered one at a time (the model has the CPU to itself); decoding overlaps, with
at most one decoder per core left to it.
"""

import base64
import collections
import html
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import traceback
import urllib.error
import urllib.request

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lib.audio import AUDIO_EXTENSIONS, AudioError
from lib.matching.catalogue import clock
from lib.errors import RunError, UsageError

DEFAULT_MAX_UPLOAD_MB = 20


class UploadError(Exception):
    """A request the server refuses: ``status`` (HTTP) and a message for the user."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


###################################################################################################
# Request body limit (ASGI middleware): refuse before reading more than the limit
###################################################################################################


class BodyLimit:
    """Refuses a request body above ``limit`` bytes with 413. The rest of the body is read and
    dropped (up to a few times the limit) before answering, because a browser that is still
    sending would otherwise see a reset connection instead of the error page."""

    def __init__(self, app, limit, slack=64 * 1024):
        """limit: the largest upload in bytes (what users are told); slack: room for the rest
        of the form around the file."""
        self.app, self.limit = app, int(limit)
        self.most = self.limit + int(slack)
        self.drain_limit = 4 * self.most + 16 * 2**20

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.most:
            if int(declared) <= self.drain_limit:
                await drain(receive, self.drain_limit)
            return await too_large(self.limit, scope)(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.most:
                    raise UploadError(413, upload_limit_text(self.limit))
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except UploadError:
            if not started:
                await drain(receive, self.drain_limit - received)
                await too_large(self.limit, scope)(scope, receive, send)


async def drain(receive, budget):
    """Read and drop what is left of a request body, at most ``budget`` bytes more."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def upload_limit_text(limit):
    return f"the upload is larger than this server's limit of {limit / 1e6:g} MB"


def too_large(limit, scope):
    wants_json = b"format=json" in scope.get("query_string", b"")
    return error_response(413, upload_limit_text(limit), limit, wants_json)


###################################################################################################
# Pages
###################################################################################################

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border-bottom: 1px solid #ccc; padding: .35em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.3em; font-weight: 600; margin: .6em 0; }
.found { color: #08660b; } .none { color: #8a1c1c; } .unknown { color: #555; }
.error { background: #fde8e8; border: 1px solid #c33; padding: .8em; margin: 1em 0; }
nav a { margin-right: 1em; }
audio { height: 2em; vertical-align: middle; }
"""

RECORDER = """
<script>
let recorder = null, chunks = [];
async function toggleRecording(button) {
  const status = document.getElementById("rec-status");
  if (recorder && recorder.state === "recording") { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    recorder = new MediaRecorder(stream);
  } catch (err) { status.textContent = "cannot record: " + err; return; }
  chunks = [];
  recorder.ondataavailable = e => chunks.push(e.data);
  recorder.onstop = async () => {
    button.textContent = "Record a clip";
    status.textContent = "sending...";
    const type = recorder.mimeType || "audio/webm";
    const ext = type.includes("ogg") ? ".ogg" : (type.includes("mp4") ? ".m4a" : ".webm");
    const form = new FormData();
    form.append("clip", new Blob(chunks, {type: type}), "recording" + ext);
    const reply = await fetch("query", {method: "POST", body: form});
    document.open(); document.write(await reply.text()); document.close();
  };
  recorder.start();
  button.textContent = "Stop and search";
  status.textContent = "recording...";
}
</script>
"""


def page(title, body):
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        "<nav><a href='./'>Search</a><a href='compare'>Compare two recordings</a>"
        "<a href='catalogue'>Catalogue</a></nav>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def form_html(limit):
    accept = ",".join(AUDIO_EXTENSIONS) + ",audio/*"
    return (
        "<form id='upload' method='post' action='query' enctype='multipart/form-data'>"
        f"<p><input type='file' name='clip' id='clip' accept='{accept}' required> "
        "<button type='submit' id='search'>Search</button> "
        f"<small>audio up to {limit / 1e6:g} MB: {', '.join(AUDIO_EXTENSIONS)}</small></p>"
        "</form><p><button type='button' onclick='toggleRecording(this)'>Record a clip</button>"
        " <span id='rec-status'></span></p>" + RECORDER
    )


def compare_form_html(limit):
    accept = ",".join(AUDIO_EXTENSIONS) + ",audio/*"
    return (
        "<form id='compare' method='post' action='compare' enctype='multipart/form-data'>"
        f"<p>A <input type='file' name='a' id='a' accept='{accept}' required></p>"
        f"<p>B <input type='file' name='b' id='b' accept='{accept}' required></p>"
        "<p><button type='submit' id='compare-button'>Compare</button> "
        f"<small>audio up to {limit / 1e6:g} MB in all</small></p></form>"
    )


def error_response(status, message, limit, as_json=False, comparing=False):
    """The error as JSON, or as the search (or comparison) page with the message above the
    form."""
    if as_json:
        return JSONResponse({"error": message, "status": status}, status_code=status)
    body = f"<div class='error' id='error'>{html.escape(message)}</div>"
    if comparing:
        return HTMLResponse(
            page("Compare two recordings", body + compare_form_html(limit)), status_code=status
        )
    return HTMLResponse(page("Version search", body + form_html(limit)), status_code=status)


def comparison_html(names, result, png):
    verdict_class = {True: "found", False: "none", None: "unknown"}[result.is_version]
    (a0, a1), (b0, b1) = result.a_s, result.b_s
    decided = ""
    if result.threshold is not None:
        decided = f" ({result.threshold_source} threshold {result.threshold:.4f})"
    rows = "".join(
        f"<tr><td class='num'>{clock(p['a_s'][0])}-{clock(p['a_s'][1])}</td>"
        f"<td class='num'>{clock(p['b_s'][0])}-{clock(p['b_s'][1])}</td>"
        f"<td class='num'>{p['distance']:.4f}</td></tr>"
        for p in result.pairs
    )
    picture = base64.b64encode(png).decode("ascii")
    return (
        f"<p>A <b>{html.escape(names[0])}</b> ({clock(result.durations[0])}), "
        f"B <b>{html.escape(names[1])}</b> ({clock(result.durations[1])})</p>"
        f"<div class='verdict {verdict_class}' id='verdict'>{html.escape(result.verdict)}</div>"
        f"<p id='distance'>distance {result.distance:.4f}{html.escape(decided)}</p>"
        f"<p id='alignment'>best alignment: A {clock(a0)}-{clock(a1)} ~ B {clock(b0)}-"
        f"{clock(b1)}</p>"
        f"<img id='picture' src='data:image/png;base64,{picture}' alt='window distances of A "
        "and B, where they meet marked'>"
        "<table id='pairs'><thead><tr><th>A</th><th>B</th><th>distance</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def result_html(name, token, result, decision):
    verdict_class = {True: "found", False: "none", None: "unknown"}[result.found]
    lines = [
        f"<p>Clip <b>{html.escape(name)}</b> ({result.duration_s:.1f} s, {result.windows} "
        "windows) "
        f"<audio controls preload='none' src='audio/clip/{token}'></audio></p>",
        f"<div class='verdict {verdict_class}' id='verdict'>{html.escape(result.verdict)}</div>",
    ]
    if result.threshold_source == "calibrated":
        lines.append(f"<p>{html.escape(decision.threshold_text().capitalize())}.</p>")
    rows = []
    for m in result.matches:
        version = "-" if m.is_version is None else ("version" if m.is_version else "no")
        chance = "-" if m.false_alarm is None else f"{m.false_alarm:.3f}"
        c0, c1 = m.clip_s
        t0, t1 = m.track_s
        rows.append(
            "<tr>"
            f"<td class='num'>{m.rank}</td><td class='id'>{html.escape(m.id)}</td>"
            f"<td class='num'>{m.distance:.4f}</td><td>{version}</td>"
            f"<td class='num'>{chance}</td>"
            f"<td class='num clip'>{clock(c0)}-{clock(c1)} "
            f"<audio controls preload='none' src='audio/clip/{token}#t={c0:.1f},{c1:.1f}'>"
            "</audio></td>"
            f"<td class='num track'>{clock(t0)}-{clock(t1)} "
            f"<audio controls preload='none' src='audio/track/{m.row}#t={t0:.1f},{t1:.1f}'>"
            "</audio></td>"
            f"<td><details><summary>picture</summary><img loading='lazy' class='picture' "
            f"src='picture/{token}/{m.row}' alt='window distances of the clip and the track'>"
            "</details></td></tr>"
        )
    lines.append(
        "<table id='matches'><thead><tr><th>rank</th><th>track</th><th>distance</th>"
        "<th>verdict</th><th>p(false alarm)</th><th>in the clip</th><th>in the track</th>"
        "<th>where they meet</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    return "".join(lines)


###################################################################################################
# The application
###################################################################################################


class Service:
    """The catalogue, the model and the uploads of one server process."""

    def __init__(
        self, catalogue, topk=10, max_upload_bytes=DEFAULT_MAX_UPLOAD_MB * 10**6, keep_clips=50
    ):
        self.catalogue = catalogue
        self.topk = int(topk)
        self.limit = int(max_upload_bytes)
        self.keep = int(keep_clips)
        self.folder = tempfile.mkdtemp(prefix="clews-serve-")
        self.clips = collections.OrderedDict()  # token -> path
        self.lock = threading.Lock()  # one query at a time on the model
        # decoding overlaps the model, but no more decoders than the cores left to them: 50
        # uploads decoded at once would share the CPU and all finish late
        self.decoders = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) - 1))
        self.files_lock = threading.Lock()

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    # uploads --------------------------------------------------------------------------------

    def save_upload(self, name, data):
        """Keep an upload under the private folder; returns its token."""
        ext = os.path.splitext(name or "")[1].lower()
        if ext not in AUDIO_EXTENSIONS:
            raise UploadError(
                415,
                f"{name or 'the upload'}: not an audio file name (expected one of "
                f"{', '.join(AUDIO_EXTENSIONS)})",
            )
        if not data:
            raise UploadError(400, f"{name}: the file is empty")
        token = secrets.token_hex(12)
        path = os.path.join(self.folder, token + ext)
        with open(path, "wb") as handle:
            handle.write(data)
        with self.files_lock:
            self.clips[token] = path
            while len(self.clips) > self.keep:
                _, old = self.clips.popitem(last=False)
                if os.path.exists(old):
                    os.remove(old)
        return token

    def clip_path(self, token):
        with self.files_lock:
            return self.clips.get(token)

    # queries --------------------------------------------------------------------------------

    def query(self, path):
        """The ``QueryResult`` of an uploaded clip; a file that is not audio is an
        ``UploadError`` saying why."""
        waveform = self.decoded(path)
        with self.lock:
            self.catalogue.refresh()
            samplerate = self.catalogue.embedder.samplerate
            return self.catalogue.query(waveform, samplerate=samplerate, topk=self.topk)

    def decoded(self, path):
        """The waveform of an uploaded file at the model's rate; ``UploadError`` if it is not
        audio."""
        try:
            with self.decoders:
                return self.catalogue.embedder.waveform(path)
        except AudioError as err:
            reason = str(err).split(": ", 1)[-1]
            raise UploadError(422, f"the upload could not be used as audio: {reason}") from err

    def compare(self, path_a, path_b):
        """The ``Comparison`` of two uploads (the catalogue's windows and calibration) and its
        picture."""
        embedder = self.catalogue.embedder
        a, b = self.decoded(path_a), self.decoded(path_b)
        with self.lock:
            result = self.catalogue.compare(a, b, samplerate=embedder.samplerate)
        return result, result.picture(("A", "B"))

    def picture(self, token, row):
        """PNG of uploaded clip ``token`` against catalogue track ``row`` (None when the clip
        is gone or the row does not exist)."""
        path = self.clip_path(token)
        if path is None or not os.path.isfile(path) or not 0 <= row < len(self.catalogue):
            return None
        embedder = self.catalogue.embedder
        waveform = self.decoded(path)
        settings = self.catalogue.settings
        with self.lock:
            windows = embedder.embed_waveform(
                waveform, float(settings["win_len"]), float(settings["hop_size"])
            )
        duration = waveform.size / embedder.samplerate
        result = self.catalogue.compare_track(windows, duration, row)
        track = self.catalogue.tracks[row]["id"]
        return result.picture(("clip", track))


def make_app(service):
    """The Starlette application of a ``Service``."""

    async def home(request):
        return HTMLResponse(page("Version search", form_html(service.limit)))

    async def read_upload(request):
        """(file name, bytes) of the form's ``clip`` file; the form's spooled files are closed
        when this returns."""
        try:
            async with request.form(max_files=1, max_fields=4) as form:
                upload = form.get("clip")
                if upload is None or isinstance(upload, str):
                    raise UploadError(400, "no file in the request (form field 'clip')")
                return os.path.basename(upload.filename or ""), await upload.read()
        except HTTPException as err:  # a malformed or over-full form
            raise UploadError(400, f"not a valid upload form: {err.detail}") from err

    async def query(request):
        as_json = request.query_params.get("format") == "json"
        try:
            name, data = await read_upload(request)
            token = await run_in_threadpool(service.save_upload, name, data)
            result = await run_in_threadpool(service.query, service.clip_path(token))
        except UploadError as err:
            return error_response(err.status, str(err), service.limit, as_json)
        if as_json:
            return JSONResponse({"clip": name, **result.as_dict()})
        decision = service.catalogue.decision
        body = result_html(name, token, result, decision) + "<h2>Another clip</h2>"
        return HTMLResponse(page("Version search", body + form_html(service.limit)))

    async def compare_page(request):
        return HTMLResponse(page("Compare two recordings", compare_form_html(service.limit)))

    async def read_pair(request):
        """[(file name, bytes)] of the form's ``a`` and ``b`` files."""
        try:
            async with request.form(max_files=2, max_fields=4) as form:
                found = []
                for field in ("a", "b"):
                    upload = form.get(field)
                    if upload is None or isinstance(upload, str):
                        raise UploadError(400, f"no file {field.upper()} in the request")
                    found.append((os.path.basename(upload.filename or ""), await upload.read()))
                return found
        except HTTPException as err:
            raise UploadError(400, f"not a valid upload form: {err.detail}") from err

    async def compare(request):
        as_json = request.query_params.get("format") == "json"
        try:
            (name_a, data_a), (name_b, data_b) = await read_pair(request)
            token_a = await run_in_threadpool(service.save_upload, name_a, data_a)
            token_b = await run_in_threadpool(service.save_upload, name_b, data_b)
            result, png = await run_in_threadpool(
                service.compare, service.clip_path(token_a), service.clip_path(token_b)
            )
        except UploadError as err:
            return error_response(err.status, str(err), service.limit, as_json, comparing=True)
        if as_json:
            return JSONResponse({"a": name_a, "b": name_b, **result.as_dict()})
        body = comparison_html((name_a, name_b), result, png) + "<h2>Two more</h2>"
        return HTMLResponse(page("Compare two recordings", body + compare_form_html(service.limit)))

    async def match_picture(request):
        try:
            png = await run_in_threadpool(
                service.picture, request.path_params["token"], request.path_params["row"]
            )
        except UploadError as err:
            return Response(str(err), status_code=err.status)
        if png is None:
            return Response("no such clip or track (only recent uploads are kept)", 404)
        return Response(png, media_type="image/png")

    async def catalogue(request):
        cat = service.catalogue
        await run_in_threadpool(cat.refresh)
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in cat.describe())
        body = f"<ul id='summary'>{lines}</ul>"
        if cat.decision is not None and os.path.isfile(plot_path(cat)):
            body += "<img src='calibration.png' alt='calibration plot' width='800'>"
        shown = cat.tracks[:200]
        rows = "".join(
            f"<tr><td class='num'>{i}</td><td>{html.escape(t['id'])}</td></tr>"
            for i, t in enumerate(shown)
        )
        more = f"<p>... and {len(cat) - len(shown)} more</p>" if len(cat) > len(shown) else ""
        body += f"<table><tr><th>row</th><th>track</th></tr>{rows}</table>{more}"
        return HTMLResponse(page(f"Catalogue: {len(cat)} tracks", body))

    async def track_audio(request):
        tracks = service.catalogue.tracks
        row = request.path_params["row"]
        if not 0 <= row < len(tracks) or not tracks[row].get("source"):
            return Response("no such track", status_code=404)
        source = tracks[row]["source"]
        if not os.path.isfile(source):
            return Response("the track's audio file is not there any more", status_code=404)
        return FileResponse(source)

    async def clip_audio(request):
        path = service.clip_path(request.path_params["token"])
        if path is None or not os.path.isfile(path):
            return Response("no such clip (only recent uploads are kept)", status_code=404)
        return FileResponse(path)

    async def calibration_plot(request):
        path = plot_path(service.catalogue)
        if not os.path.isfile(path):
            return Response("no calibration plot", status_code=404)
        return FileResponse(path, media_type="image/png")

    async def failure(request, exc):
        traceback.print_exception(exc, file=sys.stderr)  # for the operator, not the user
        if isinstance(exc, (RunError, UsageError)):
            message = str(exc)
        else:
            message = "internal error while answering; the server's log says more"
        as_json = request.query_params.get("format") == "json"
        return error_response(500, message, service.limit, as_json)

    routes = [
        Route("/", home),
        Route("/query", query, methods=["POST"]),
        Route("/compare", compare_page),
        Route("/compare", compare, methods=["POST"]),
        Route("/picture/{token:str}/{row:int}", match_picture),
        Route("/catalogue", catalogue),
        Route("/audio/track/{row:int}", track_audio),
        Route("/audio/clip/{token:str}", clip_audio),
        Route("/calibration.png", calibration_plot),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: failure})
    return BodyLimit(app, service.limit)


def plot_path(catalogue):
    return os.path.join(catalogue.folder, "calibration.png")


###################################################################################################
# The client side: what the demo, the tests and the benchmark use to talk to a server
###################################################################################################

SERVING = re.compile(r"Serving .* on (http://[^ ]+/) \(Ctrl-C stops\)")


def serving_line(catalogue, host, port):
    """The line ``match.py serve`` prints once it listens (``served_url`` reads it back)."""
    shown = f"[{host}]" if ":" in host else host
    return f"Serving {catalogue} on http://{shown}:{port}/ (Ctrl-C stops)"


def served_url(line):
    """The base URL in a line of ``match.py serve``'s output, or None."""
    found = SERVING.search(line)
    return found.group(1) if found else None


def wait_for_url(lines, on_line=None):
    """The base URL in ``match.py serve``'s output ``lines`` (its stdout, read line by line until
    the URL comes; each line is passed to ``on_line`` first), or None if the output ends."""
    for line in lines:
        if on_line is not None:
            on_line(line)
        url = served_url(line)
        if url is not None:
            return url
    return None


def post_upload(base_url, name, data, fmt=None, field="clip", timeout=600):
    """(HTTP status, body text) of uploading ``data`` as the file ``name`` to ``/query``
    (``fmt="json"``: the JSON answer)."""
    return post_files(base_url, "query", [(field, name, data)], fmt, timeout)


def post_files(base_url, route, files, fmt=None, timeout=600):
    """(HTTP status, body text) of a multipart form of ``files`` [(field, file name, bytes)]
    posted to ``route`` (``fmt="json"``: the JSON answer)."""
    boundary = secrets.token_hex(16)
    body = b""
    for field, name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        body += head + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    url = base_url + route + (f"?format={fmt}" if fmt else "")
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
