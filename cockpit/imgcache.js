/* SPDX-License-Identifier: MIT */
/* The Image cache page: a client of org.imgcache.Manager on the system bus, through cockpit.dbus() and
 * nothing else. The first call activates imgcached as any bus client's would. After the first load the page
 * follows the daemon's signals: ImageCached, ImageRemoved, ImageQueued, JobNew and JobRemoved, and the
 * PropertiesChanged of the Manager and of each Job object (a transfer's bytes come from those, never from
 * asking again). Every value from the bus reaches the page as text (textContent), never as markup. */
"use strict";

(function () {
    const NAME = "org.imgcache.Manager";
    const PATH = "/org/imgcache/Manager";
    const IFACE = "org.imgcache.Manager";
    const JOB_IFACE = "org.imgcache.Job";
    const JOB_PREFIX = "/org/imgcache/job";
    const PROPS = "org.freedesktop.DBus.Properties";

    /* Errors that mean the daemon could not be started (or is not installed), as the bus reports them. */
    const START_ERRORS = [
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.TimedOut",
        "org.freedesktop.DBus.Error.NoReply",
    ];

    /* Titles for the daemon's named errors; the daemon's own message follows each. */
    const ERROR_TITLES = {
        "org.freedesktop.DBus.Error.AccessDenied": "Not authorized",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": "Authentication required",
        "org.imgcache.Error.InvalidImageId": "Invalid image id",
        "org.imgcache.Error.NoSuchImage": "No such image",
        "org.imgcache.Error.NoSuchJob": "No such transfer",
        "org.imgcache.Error.NoUpstream": "No upstream",
        "org.imgcache.Error.UpstreamFailed": "The upstream failed",
        "org.imgcache.Error.ChecksumMismatch": "Checksum mismatch",
        "org.imgcache.Error.ImagePinned": "Image is pinned",
        "org.imgcache.Error.TooManyOpenFiles": "Too many open files",
        "org.freedesktop.DBus.Error.NotSupported": "Not supported",
    };

    let client = null;
    let generation = 0;     /* bumps on every (re)connect: late answers of an older client are dropped */
    let ready = false;

    const model = {
        props: {},
        freeSpace: null,
        images: new Map(),  /* id → {id, size, hits, lastAccess, lastModified, checksum} */
        pins: new Map(),    /* id → count */
        queued: [],         /* {id, queuedAt, checksum, lastError, nextAttempt} */
        jobs: new Map(),    /* path → {path, id, imageId, state, bytesDone, bytesTotal, progress, error, samples} */
        selected: new Set(),
        sort: { key: "id", dir: 1 },
    };

    const $ = id => document.getElementById(id);

    /* ---- formatting ------------------------------------------------------------------------------- */

    function formatBytes(n) {
        if (n === null || n === undefined)
            return "–";
        const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let i = 0;
        let v = Number(n);
        while (v >= 1024 && i < units.length - 1) {
            v /= 1024;
            i++;
        }
        return i === 0 ? v + " B" : v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
    }

    function formatTime(usec) {
        if (!usec)
            return "never";
        return new Date(usec / 1000).toLocaleString();
    }

    function formatDuration(seconds) {
        if (!isFinite(seconds) || seconds < 0)
            return "–";
        seconds = Math.round(seconds);
        if (seconds < 60)
            return seconds + " s";
        if (seconds < 3600)
            return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
        return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    }

    function formatRelative(usec) {
        if (!usec)
            return "–";
        const s = (usec / 1000 - Date.now()) / 1000;
        return s <= 0 ? "due now" : "in " + formatDuration(s);
    }

    function shortChecksum(c) {
        if (!c)
            return "unknown";
        const colon = c.indexOf(":");
        return colon < 0 ? c : c.slice(0, colon + 1) + c.slice(colon + 1, colon + 13) + "…";
    }

    function plural(n, one, many) {
        return n + " " + (n === 1 ? one : many);
    }

    function el(tag, attrs, ...children) {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs || {})) {
            if (k === "class")
                e.className = v;
            else if (k === "text")
                e.textContent = v;
            else if (k === "style")
                Object.assign(e.style, v); /* through the CSSOM: Cockpit's CSP refuses style attributes */
            else if (k.startsWith("on"))
                e.addEventListener(k.slice(2), v);
            else if (v !== undefined && v !== null && v !== false)
                e.setAttribute(k, v === true ? "" : v);
        }
        for (const c of children)
            if (c !== null && c !== undefined)
                e.append(c);
        return e;
    }

    /* ---- notices and errors ----------------------------------------------------------------------- */

    function errorName(e) {
        return (e && e.name) || (e && e.problem) || "";
    }

    /* A readable title and text for any failure: polkit's refusal, the daemon's named errors (with the
     * daemon's message as it is), Cockpit's channel problems. Never a stack trace. */
    function describeError(e) {
        const name = errorName(e);
        let text = (e && e.message) ? String(e.message) : (e && e.problem ? cockpit.message(e) : String(e));
        let title = ERROR_TITLES[name];
        if (name === "org.freedesktop.DBus.Error.AccessDenied")
            text += " Your user may not do this; polkit refused it.";
        else if (name === "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")
            text += " No authentication agent could ask for it: turn on administrative access, " +
                    "or ask an administrator.";
        if (!title)
            title = "Failed";
        return { title, text, name };
    }

    function notify(kind, title, text, name) {
        const box = el("div", { class: "notice notice-" + kind, "data-kind": kind, "data-error": name || null },
                       el("span", null, el("strong", { text: title + ": " }), text));
        const close = el("button", { class: "close", type: "button", "aria-label": "Close", text: "×",
                                     onclick: () => box.remove() });
        box.append(close);
        const notices = $("notices");
        notices.prepend(box);
        while (notices.children.length > 5)
            notices.lastElementChild.remove();
        return box;
    }

    function notifyError(what, e) {
        if (e && e.stale)
            return;
        const d = describeError(e);
        notify("danger", d.title, what + ": " + d.text, d.name);
    }

    /* ---- page states ------------------------------------------------------------------------------ */

    function setState(s, message) {
        $("app").dataset.state = s;
        $("state-loading").hidden = s !== "loading";
        $("state-failed").hidden = s !== "failed";
        $("state-buserror").hidden = s !== "buserror";
        $("content").hidden = s !== "ready";
        $("prune").disabled = $("clean").disabled = s !== "ready";
        if (s === "failed")
            $("failed-message").textContent = message;
        if (s === "buserror")
            $("buserror-message").textContent = message;
        ready = s === "ready";
    }

    /* The first load failed, or the channel closed: the daemon did not start, or the bus is the problem.
     * Cockpit's bridge closes the channel of a name it could not activate with the problem "not-found" and
     * no message: the bus's own error (and the daemon's) is in the journal then. */
    function loadFailed(e) {
        const name = errorName(e);
        const d = describeError(e);
        if (name === "not-found")
            setState("failed", "The system bus could not start " + NAME + ": imgcached exited at start, " +
                     "or it is not installed.\n(" + name + ")");
        else if (name.startsWith("org.freedesktop.DBus.Error.Spawn.") || START_ERRORS.includes(name))
            setState("failed", d.text + "\n(" + name + ")");
        else
            setState("buserror", d.text + (name ? "\n(" + name + ")" : ""));
    }

    /* ---- bus calls -------------------------------------------------------------------------------- */

    /* A Manager method. "i": polkit may ask the admin for a password where an agent can. */
    function call(method, args, type) {
        const g = generation;
        return client.call(PATH, IFACE, method, args || [], { type: type || "", flags: "i" })
                .then(reply => {
                    if (g !== generation)
                        throw Object.assign(new Error("superseded by a newer connection"), { stale: true });
                    return reply;
                });
    }

    function getAll(path, iface) {
        return client.call(path, PROPS, "GetAll", [iface], { type: "s" }).then(reply => {
            const out = {};
            for (const [k, v] of Object.entries(reply[0]))
                out[k] = v.v;
            return out;
        });
    }

    /* ---- loading ---------------------------------------------------------------------------------- */

    function loadImages() {
        return call("ListImages").then(([list]) => {
            model.images = new Map(list.map(r => [r[0], imageFromTuple(r)]));
            for (const id of model.selected)
                if (!model.images.has(id))
                    model.selected.delete(id);
            renderImages();
        });
    }

    function imageFromTuple(r) {
        return { id: r[0], size: r[1], hits: r[2], lastAccess: r[3], lastModified: r[4], checksum: r[5] };
    }

    function loadQueue() {
        return call("ListQueuedDetails").then(([list]) => {
            model.queued = list.map(r => ({ id: r[0], queuedAt: r[1], checksum: r[2], lastError: r[3],
                                            nextAttempt: r[4] }));
            renderQueue();
        });
    }

    function loadPins() {
        return call("ListPins").then(([list]) => {
            model.pins = new Map();
            for (const [id] of list)
                model.pins.set(id, (model.pins.get(id) || 0) + 1);
            renderImages();
        });
    }

    function loadFreeSpace() {
        return client.call(PATH, PROPS, "Get", [IFACE, "FreeSpace"], { type: "ss" })
                .then(([v]) => {
                    model.freeSpace = v.v;
                    renderStatus();
                })
                .catch(() => {
                    model.freeSpace = null;
                });
    }

    function loadJobs() {
        return call("ListJobs").then(([list]) => {
            for (const [, , , , path] of list)
                addJob(path);
        });
    }

    function loadAll() {
        const g = generation;
        /* This call activates imgcached when it is not running. */
        return getAll(PATH, IFACE).then(props => {
            if (g !== generation)
                return;
            model.props = props;
            renderStatus();
            renderFleet();
            return Promise.all([loadImages(), loadQueue(), loadPins(), loadJobs(), loadFreeSpace()]);
        });
    }

    /* Reloads coalesced: a burst of signals costs one call. */
    const pending = {};
    function later(key, fn, ms) {
        if (pending[key])
            return;
        pending[key] = window.setTimeout(() => {
            delete pending[key];
            if (ready)
                fn().catch(e => notifyError("Refreshing", e));
        }, ms || 0);
    }

    /* ---- jobs ------------------------------------------------------------------------------------- */

    function jobRecord(path) {
        let j = model.jobs.get(path);
        if (!j) {
            j = { path, id: 0, imageId: "", state: "running", bytesDone: 0, bytesTotal: 0, progress: 0, error: "",
                  samples: [] };
            model.jobs.set(path, j);
        }
        return j;
    }

    function applyJobProps(j, props) {
        if ("Id" in props) j.id = props.Id;
        if ("ImageId" in props) j.imageId = props.ImageId;
        if ("State" in props) j.state = props.State;
        if ("Error" in props) j.error = props.Error;
        if ("Progress" in props) j.progress = props.Progress;
        if ("BytesTotal" in props) j.bytesTotal = props.BytesTotal;
        if ("BytesDone" in props) {
            j.bytesDone = props.BytesDone;
            j.samples.push({ t: Date.now(), b: j.bytesDone });
            while (j.samples.length > 2 && Date.now() - j.samples[0].t > 10000)
                j.samples.shift();
        }
    }

    function addJob(path) {
        const j = jobRecord(path);
        getAll(path, JOB_IFACE).then(props => {
            if (model.jobs.get(path) !== j)
                return;     /* ended meanwhile */
            applyJobProps(j, props);
            renderJobs();
        }).catch(() => {
            /* The job ended before we asked: JobRemoved says how. */
        });
        renderJobs();
    }

    function onJobRemoved(id, path, result) {
        const j = model.jobs.get(path);
        model.jobs.delete(path);
        renderJobs();
        const image = (j && j.imageId) || ("job " + id);
        if (result === "failed")
            notify("danger", "Transfer failed", image + ": " + ((j && j.error) || "the fetch failed"));
        else if (result === "cancelled")
            notify("info", "Transfer cancelled", image);
        later("queue", loadQueue);
    }

    /* Bytes per second over the last few seconds, now included: a stalled transfer's rate falls to 0. */
    function jobRate(j) {
        const s = j.samples;
        if (s.length === 0)
            return null;
        const first = s[0];
        const dt = (Date.now() - first.t) / 1000;
        if (dt < 0.5)
            return null;
        return (j.bytesDone - first.b) / dt;
    }

    /* ---- signals ---------------------------------------------------------------------------------- */

    function onManagerSignal(path, iface, signal, args) {
        switch (signal) {
        case "ImageCached":
            call("GetImage", [args[0]], "s").then(([r]) => {
                model.images.set(r[0], imageFromTuple(r));
                renderImages();
            }).catch(() => later("images", loadImages));
            break;
        case "ImageRemoved":
            model.images.delete(args[0]);
            model.selected.delete(args[0]);
            renderImages();
            break;
        case "ImageQueued":
            later("queue", loadQueue);
            break;
        case "JobNew":
            addJob(args[1]);
            later("queue", loadQueue);
            break;
        case "JobRemoved":
            onJobRemoved(args[0], args[1], args[2]);
            break;
        }
    }

    function onManagerProps(path, iface, signal, args) {
        if (args[0] !== IFACE)
            return;
        const changed = args[1];
        for (const [k, v] of Object.entries(changed))
            model.props[k] = v.v;
        renderStatus();
        if ("QueuedCount" in changed)
            later("queue", loadQueue);
        if ("PinCount" in changed)
            later("pins", loadPins);
        if ("CurrentSize" in changed)
            later("free", loadFreeSpace, 200);
        /* Per-image hits and last access are only in ListImages. */
        if ("Hits" in changed)
            later("images", loadImages, 500);
    }

    function onJobProps(path, iface, signal, args) {
        if (args[0] !== JOB_IFACE || !path.startsWith(JOB_PREFIX + "/"))
            return;
        const j = jobRecord(path);
        const props = {};
        for (const [k, v] of Object.entries(args[1]))
            props[k] = v.v;
        applyJobProps(j, props);
        renderJobs();
    }

    /* ---- rendering -------------------------------------------------------------------------------- */

    function renderStatus() {
        const p = model.props;
        const size = p.CurrentSize || 0;
        const max = p.MaxSize || 0;
        const keepFree = p.KeepFree || 0;
        /* The cache may grow to MaxSize, or less where KeepFree would run out first. */
        let limit = max;
        if (model.freeSpace !== null && keepFree > 0)
            limit = Math.min(max, size + Math.max(0, model.freeSpace - keepFree));
        const fill = $("usage-fill");
        fill.style.width = max ? Math.min(100, 100 * size / max) + "%" : "0";
        fill.classList.toggle("over", size > limit);
        const bar = $("usage-bar");
        bar.querySelectorAll(".usage-marker").forEach(m => m.remove());
        if (max && limit < max)
            bar.append(el("div", { class: "usage-marker", style: { left: (100 * limit / max) + "%" },
                                   title: "KeepFree limit" }));
        bar.setAttribute("aria-label", formatBytes(size) + " of " + formatBytes(max));
        let legend = formatBytes(size) + " used of " + formatBytes(max) + " (MaxSize)";
        legend += " · KeepFree " + formatBytes(keepFree);
        if (model.freeSpace !== null)
            legend += ", " + formatBytes(model.freeSpace) + " free on the filesystem";
        if (limit < max)
            legend += " · KeepFree limits the cache to " + formatBytes(limit);
        $("usage-legend").textContent = legend;

        $("st-images").textContent = p.ImageCount ?? "–";
        const hits = p.Hits || 0;
        const misses = p.Misses || 0;
        const ratio = hits + misses ? " (" + (100 * hits / (hits + misses)).toFixed(1) + "% hits)" : "";
        $("st-hits").textContent = hits + " / " + misses + ratio;
        $("st-served").textContent = formatBytes(p.BytesServed || 0);
        $("st-pins").textContent = p.PinCount ?? "–";
        $("st-upstream").textContent = p.Upstream || "none configured";
        $("st-listen").textContent = p.ListenAddress || "not serving HTTP";
        $("st-version").textContent = (p.Version || "–") + (p.Driver ? " · " + p.Driver + " index" : "");
    }

    function sortedImages() {
        const { key, dir } = model.sort;
        const list = Array.from(model.images.values(), img => ({ ...img, pins: model.pins.get(img.id) || 0 }));
        list.sort((a, b) => {
            let c;
            if (typeof a[key] === "string")
                c = a[key].localeCompare(b[key]);
            else
                c = a[key] - b[key];
            return dir * (c || a.id.localeCompare(b.id));
        });
        return list;
    }

    function renderImages() {
        const tbody = $("images-table").tBodies[0];
        tbody.replaceChildren();
        for (const img of sortedImages()) {
            const checked = model.selected.has(img.id);
            const box = el("input", { type: "checkbox", "aria-label": "Select " + img.id, checked,
                                      onchange: ev => {
                                          if (ev.target.checked)
                                              model.selected.add(img.id);
                                          else
                                              model.selected.delete(img.id);
                                          renderImages();
                                      } });
            tbody.append(el("tr", { "data-image-id": img.id, class: checked ? "selected" : null },
                            el("td", { class: "check" }, box),
                            el("td", { class: "image-id", text: img.id }),
                            el("td", { class: "num", text: formatBytes(img.size), title: img.size + " bytes" }),
                            el("td", { class: "num", text: String(img.hits) }),
                            el("td", { text: formatTime(img.lastAccess) }),
                            el("td", { class: "checksum", text: shortChecksum(img.checksum),
                                       title: img.checksum || "no checksum recorded" }),
                            el("td", { class: "num", text: String(img.pins) }),
                            el("td", { class: "actions" },
                               el("button", { class: "btn btn-small", type: "button", text: "Verify",
                                              "data-action": "verify", onclick: () => verify(img.id) }),
                               el("button", { class: "btn btn-small", type: "button", text: "Delete",
                                              "data-action": "delete", onclick: () => confirmDelete([img.id]) }))));
        }
        const empty = model.images.size === 0;
        $("images-table").hidden = empty;
        $("images-empty").hidden = !empty;
        $("app").dataset.empty = empty ? "yes" : "no";
        $("delete-selected").disabled = model.selected.size === 0;
        $("delete-selected").textContent = model.selected.size ? "Delete selected (" + model.selected.size + ")"
                                                                : "Delete selected";
        $("select-all").checked = !empty && model.selected.size === model.images.size;
        for (const th of $("images-table").tHead.querySelectorAll("th[data-sort]"))
            th.setAttribute("aria-sort", th.dataset.sort === model.sort.key
                ? (model.sort.dir > 0 ? "ascending" : "descending") : "none");
    }

    function renderQueue() {
        const tbody = $("queue-table").tBodies[0];
        tbody.replaceChildren();
        for (const q of model.queued) {
            const running = Array.from(model.jobs.values()).some(j => j.imageId === q.id);
            tbody.append(el("tr", { "data-queued-id": q.id },
                            el("td", { text: q.id }),
                            el("td", { text: formatTime(q.queuedAt) }),
                            el("td", { text: running ? "fetching now" : formatRelative(q.nextAttempt) }),
                            el("td", { class: q.lastError ? "error-text" : null, text: q.lastError || "–" }),
                            el("td", { class: "actions" },
                               el("button", { class: "btn btn-small", type: "button", text: "Dequeue",
                                              onclick: () => dequeue(q.id) }))));
        }
        $("queue-table").hidden = model.queued.length === 0;
        $("queue-empty").hidden = model.queued.length !== 0;
    }

    function renderJobs() {
        const tbody = $("transfers-table").tBodies[0];
        tbody.replaceChildren();
        for (const j of model.jobs.values()) {
            const pct = Math.round(100 * (j.progress || 0));
            const rate = jobRate(j);
            const left = rate && j.bytesTotal ? (j.bytesTotal - j.bytesDone) / rate : NaN;
            tbody.append(el("tr", { "data-job": j.path, "data-image-id": j.imageId, "data-state": j.state },
                            el("td", { text: j.imageId || "…" }),
                            el("td", null,
                               el("div", { class: "progress" },
                                  el("div", { class: "progress-bar" },
                                     el("div", { class: "progress-fill", style: { width: pct + "%" } })),
                                  el("span", { class: "progress-label", text: j.bytesTotal ? pct + "%" : "?" }))),
                            el("td", { class: "bytes",
                                       text: formatBytes(j.bytesDone) + " of " +
                                             (j.bytesTotal ? formatBytes(j.bytesTotal) : "unknown") }),
                            el("td", { class: "rate", text: rate === null ? "–" : formatBytes(rate) + "/s" }),
                            el("td", { class: "eta", text: rate ? formatDuration(left) : "–" }),
                            el("td", { class: "actions" },
                               el("button", { class: "btn btn-small", type: "button", text: "Cancel",
                                              onclick: () => cancelJob(j) }))));
        }
        $("transfers-table").hidden = model.jobs.size === 0;
        $("transfers-empty").hidden = model.jobs.size !== 0;
        renderQueue();
    }

    function renderFleet() {
        const self = model.props.FleetSelf;
        $("fleet").hidden = !self;
        if (!self)
            return;
        $("fleet-self").textContent = self;
        const ul = $("fleet-nodes");
        if (!ul.dataset.lookup)
            ul.replaceChildren(...(model.props.FleetNodes || []).map(n => el("li", { text: n })));
    }

    /* ---- actions ---------------------------------------------------------------------------------- */

    function busy(button, promise) {
        if (button)
            button.disabled = true;
        return promise.finally(() => {
            if (button)
                button.disabled = false;
        });
    }

    function prune() {
        busy($("prune"), call("Prune").then(([files, bytes]) => {
            if (files === 0)
                notify("success", "Prune", "nothing removed: the cache is within MaxSize");
            else
                notify("success", "Prune", "removed " + plural(files, "image", "images") + ", " +
                       formatBytes(bytes));
        }).catch(e => notifyError("Prune", e)));
    }

    function clean() {
        busy($("clean"), call("Clean", [0], "t").then(([stalled, invalid]) => {
            notify("success", "Clean", "removed " + plural(stalled, "stalled download", "stalled downloads") +
                   " and " + plural(invalid, "invalid image", "invalid images"));
        }).catch(e => notifyError("Clean", e)));
    }

    function verify(id) {
        call("Verify", [id], "s").then(([good]) => {
            if (good)
                notify("success", "Verify", id + " is intact: its checksum matches");
            else
                notify("danger", "Verify", id + " is corrupt: it was moved to invalid/");
        }).catch(e => notifyError("Verify " + id, e));
    }

    function confirmDelete(ids) {
        const dialog = $("confirm");
        $("confirm-title").textContent = ids.length === 1 ? "Delete " + ids[0] + "?"
                                                          : "Delete " + ids.length + " images?";
        $("confirm-text").textContent = "The files are removed from the cache. A later request fetches them " +
                                        "from the upstream again.";
        $("confirm-list").replaceChildren(...ids.map(id => el("li", { text: id })));
        dialog.onclose = () => {
            if (dialog.returnValue === "ok")
                deleteImages(ids);
        };
        dialog.returnValue = "";
        dialog.showModal();
    }

    async function deleteImages(ids) {
        let deleted = 0;
        for (const id of ids) {
            try {
                await call("DeleteImage", [id], "s");
                deleted++;
                model.selected.delete(id);
            } catch (e) {
                notifyError("Delete " + id, e);
            }
        }
        if (deleted)
            notify("success", "Delete", "deleted " + plural(deleted, "image", "images"));
        renderImages();
    }

    function readQueueId() {
        const id = $("queue-id").value.trim();
        return id;
    }

    function queueImage(ev) {
        ev.preventDefault();
        const id = readQueueId();
        /* Sent even when our check refuses it: the daemon's own message is the one of record. */
        busy($("queue-add"), call("QueueImage", [id, ""], "ss").then(([queued]) => {
            if (queued)
                notify("success", "Queue", id + " is queued");
            else
                notify("info", "Queue", id + " is already queued or cached");
            $("queue-id").value = "";
            validateQueueId();
            later("queue", loadQueue);
        }).catch(e => notifyError("Queue " + id, e)));
    }

    function fetchNow() {
        const id = readQueueId();
        busy($("queue-fetch"), call("FetchImage", [id, ""], "ss").then(() => {
            notify("info", "Fetch", "fetching " + id);
            $("queue-id").value = "";
            validateQueueId();
        }).catch(e => notifyError("Fetch " + id, e)));
    }

    function prefetch() {
        busy($("queue-prefetch"), call("Prefetch").then(([jobs]) => {
            if (jobs.length === 0)
                notify("info", "Prefetch", "nothing queued to fetch");
            else
                notify("info", "Prefetch", "started " + plural(jobs.length, "transfer", "transfers"));
            for (const path of jobs)
                if (!model.jobs.has(path))
                    addJob(path);
        }).catch(e => notifyError("Prefetch", e)));
    }

    function dequeue(id) {
        call("DequeueImage", [id], "s").then(() => later("queue", loadQueue))
                .catch(e => notifyError("Dequeue " + id, e));
    }

    function cancelJob(j) {
        client.call(j.path, JOB_IFACE, "Cancel", [], { flags: "i" })
                .catch(e => notifyError("Cancel " + (j.imageId || j.path), e));
    }

    function lookupFleet(ev) {
        ev.preventDefault();
        const id = $("fleet-id").value.trim();
        call("GetImageNodes", [id], "s").then(([nodes]) => {
            const ul = $("fleet-nodes");
            ul.dataset.lookup = id;
            const all = new Set([...(model.props.FleetNodes || []), ...nodes]);
            ul.replaceChildren(...Array.from(all, n => el("li", { class: nodes.includes(n) ? "holds" : null,
                                                                  text: n + (nodes.includes(n) ? ": holds " + id
                                                                                               : "") })));
            if (nodes.length === 0)
                ul.append(el("li", { text: "No node holds " + id + "." }));
        }).catch(e => notifyError("Look up " + id, e));
    }

    /* Instant feedback from our copy of the daemon's rules; submitting still asks the daemon. */
    function validateQueueId() {
        const id = readQueueId();
        const reason = id ? ImageId.invalidReason(id) : null;
        $("queue-id").setAttribute("aria-invalid", reason ? "true" : "false");
        $("queue-hint").hidden = !reason;
        $("queue-hint").textContent = reason ? "Invalid image id: " + reason : "";
    }

    /* ---- connection ------------------------------------------------------------------------------- */

    function connect() {
        generation++;
        const g = generation;
        if (client)
            client.close();
        model.jobs.clear();
        setState("loading");
        client = cockpit.dbus(NAME, { bus: "system", superuser: "try" });
        client.addEventListener("close", (ev, options) => {
            if (g !== generation)
                return;
            loadFailed(options);
        });
        /* The daemon exits when idle; its name coming back (another client activated it) reloads the page. */
        client.addEventListener("owner", (ev, owner) => {
            if (g !== generation || !ready)
                return;
            $("stopped").hidden = !!owner;
            if (owner)
                loadAll().catch(loadFailed);
        });
        client.subscribe({ path: PATH, interface: IFACE }, onManagerSignal);
        client.subscribe({ path: PATH, interface: PROPS, member: "PropertiesChanged" }, onManagerProps);
        client.subscribe({ path_namespace: JOB_PREFIX, interface: PROPS, member: "PropertiesChanged" }, onJobProps);
        loadAll().then(() => {
            if (g === generation)
                setState("ready");
        }).catch(e => {
            if (g === generation)
                loadFailed(e);
        });
    }

    function refresh() {
        $("stopped").hidden = true;
        loadAll().catch(loadFailed);
    }

    function init() {
        $("prune").addEventListener("click", prune);
        $("clean").addEventListener("click", clean);
        $("failed-retry").addEventListener("click", connect);
        $("buserror-reload").addEventListener("click", () => window.location.reload());
        $("stopped-refresh").addEventListener("click", refresh);
        $("queue-form").addEventListener("submit", queueImage);
        $("queue-id").addEventListener("input", validateQueueId);
        $("queue-fetch").addEventListener("click", fetchNow);
        $("queue-prefetch").addEventListener("click", prefetch);
        $("fleet-form").addEventListener("submit", lookupFleet);
        $("delete-selected").addEventListener("click", () => confirmDelete(Array.from(model.selected).sort()));
        $("select-all").addEventListener("change", ev => {
            model.selected = ev.target.checked ? new Set(model.images.keys()) : new Set();
            renderImages();
        });
        for (const th of $("images-table").tHead.querySelectorAll("th[data-sort]"))
            th.addEventListener("click", () => {
                const key = th.dataset.sort;
                model.sort = { key, dir: model.sort.key === key ? -model.sort.dir : 1 };
                renderImages();
            });
        /* The clock of rates and times left (a display timer: nothing is asked of the bus). */
        window.setInterval(() => {
            if (ready && model.jobs.size)
                renderJobs();
        }, 1000);
        connect();
    }

    document.addEventListener("DOMContentLoaded", init);
}());
