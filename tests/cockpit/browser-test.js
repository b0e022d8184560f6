// SPDX-License-Identifier: MIT
//
// The Cockpit page in chromium, driven by puppeteer-core (run by test-cockpit.sh, which sets up the bus,
// polkitd, the upstream and cockpit-ws and passes them in TEST_* variables). Each check waits on the page's
// DOM (waitForFunction/waitForSelector with a deadline), never for a fixed time, and asserts what it
// waited for. Prints TAP-like lines; the first failure saves failure.png and the page's console, exits 1.
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const puppeteer = require("puppeteer-core");

const env = name => {
    const v = process.env[name];
    if (!v)
        throw new Error(name + " is not set (run test-cockpit.sh)");
    return v;
};
const URL = env("TEST_URL");
const CACHE = env("TEST_CACHE_DIR");
const SHOTS = env("TEST_SCREENSHOTS");
const WAIT = 15000;

const MiB = 1024 * 1024;
let page = null;
let n = 0;
const consoleLines = [];
const cspErrors = [];

function assert(cond, message) {
    if (!cond)
        throw new Error(message);
}

async function check(name, fn) {
    n++;
    try {
        await fn();
        console.log("ok " + n + " - " + name);
    } catch (e) {
        console.log("not ok " + n + " - " + name);
        console.log("# " + String(e && e.stack || e).replace(/\n/g, "\n# "));
        if (page) {
            await page.screenshot({ path: path.join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
            const text = await page.evaluate(() => document.body.innerText).catch(() => "(no page)");
            console.log("# page text:\n# " + text.replace(/\n/g, "\n# "));
        }
        console.log("# browser console:\n# " + consoleLines.join("\n# "));
        throw e;
    }
}

async function shot(name) {
    await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
}

// Waits until fn(...args), run in the page, returns something truthy; returns it.
async function until(fn, ...args) {
    const handle = await page.waitForFunction(fn, { timeout: WAIT, polling: "mutation" }, ...args);
    return handle.jsonValue();
}

const text = sel => page.$eval(sel, e => e.textContent);
const imageRows = () => page.$$eval("#images-table tbody tr", rows => rows.map(r => r.dataset.imageId));
const notice = (kind, needle) => until((kind, needle) => {
    const n = Array.from(document.querySelectorAll("#notices .notice"))
            .find(e => e.dataset.kind === kind && e.textContent.includes(needle));
    return n ? n.textContent : null;
}, kind, needle);

async function confirmDialog(expectIds) {
    await page.waitForSelector("#confirm[open]", { timeout: WAIT });
    const listed = await page.$$eval("#confirm-list li", li => li.map(e => e.textContent));
    assert(JSON.stringify(listed) === JSON.stringify(expectIds),
           "the confirmation lists " + JSON.stringify(listed) + ", not " + JSON.stringify(expectIds));
    await page.click("#confirm-ok");
}

function gdbus(...args) {
    return execFileSync("gdbus", ["call", "--system", ...args], { encoding: "utf8" }).trim();
}

async function main() {
    const browser = await puppeteer.launch({
        executablePath: process.env.TEST_CHROMIUM || "/usr/bin/chromium",
        headless: false, // the flags below say --headless; puppeteer adds nothing of its own for it
        args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--user-data-dir=" + env("TEST_USER_DATA_DIR"), "--window-size=1280,1000"],
        defaultViewport: { width: 1280, height: 1000 },
        // The browser stays off the private system bus, which the last check takes away from the bridge.
        env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: "unix:path=/nonexistent", DBUS_SESSION_BUS_ADDRESS: "" },
    });
    try {
        page = await browser.newPage();
        page.on("console", m => consoleLines.push(m.type() + ": " + m.text()));
        page.on("pageerror", e => consoleLines.push("pageerror: " + e.message));
        page.on("console", m => {
            if (m.type() === "error" && m.text().includes("Content Security Policy"))
                cspErrors.push(m.text());
        });
        await run();
    } finally {
        await browser.close();
    }
}

async function run() {
    await check("a daemon that fails to start gets its own state, with the bus's error", async () => {
        await page.goto(URL, { waitUntil: "load" });
        await page.waitForSelector('#app[data-state="failed"]', { timeout: WAIT });
        const msg = await text("#failed-message");
        // cockpit-bridge closes the channel of a name it could not activate as "not-found", without the
        // bus's message (that is in the bus's log: the daemon's complaint about its config).
        assert(msg.includes("could not start org.imgcache.Manager") && msg.includes("(not-found)"),
               "failed state without the reason: " + msg);
        await shot("cockpit-failed.png");
    });

    await check("Try again activates the daemon on the bus and the table lists the cached images", async () => {
        fs.copyFileSync(env("TEST_CONFIG_GOOD"), env("TEST_CONFIG"));
        await page.click("#failed-retry");
        await page.waitForSelector('#app[data-state="ready"]', { timeout: WAIT });
        const pid = gdbus("--dest", "org.freedesktop.DBus", "--object-path", "/org/freedesktop/DBus",
                          "--method", "org.freedesktop.DBus.GetConnectionUnixProcessID", "org.imgcache.Manager");
        fs.writeFileSync(env("TEST_DAEMON_PIDFILE"), pid.match(/\d+/)[0] + "\n");
        const rows = await imageRows();
        assert(JSON.stringify(rows) === JSON.stringify(["alpha.img", "beta.img", "protected.img"]),
               "image rows: " + JSON.stringify(rows));
        assert(await text("#st-images") === "3", "status: images " + await text("#st-images"));
        assert((await text("#st-upstream")).startsWith("http://127.0.0.1:"), "status: no upstream");
        assert((await text("#usage-legend")).includes("of 5.0 MiB (MaxSize)"), "the bar does not show MaxSize");
    });

    await check("an invalid id is flagged at once and refused with the daemon's own message", async () => {
        await page.type("#queue-id", ".hidden");
        await page.waitForSelector("#queue-hint:not([hidden])", { timeout: WAIT });
        assert((await text("#queue-hint")).includes("must not start with '.'"), "no instant hint");
        await page.click("#queue-add");
        const msg = await until(() => {
            const n = document.querySelector('#notices [data-error="org.imgcache.Error.InvalidImageId"]');
            return n && n.textContent;
        });
        assert(msg.includes("Invalid image id '.hidden': an image id must not start with '.'"),
               "not the daemon's message: " + msg);
        await shot("cockpit-invalid-id.png");
        await page.$eval("#queue-id", e => { e.value = ""; });
    });

    await check("a queued image is listed, Prefetch shows its transfer's progress live", async () => {
        await page.type("#queue-id", "big.img");
        await page.click("#queue-add");
        await page.waitForSelector('#queue-table tr[data-queued-id="big.img"]', { timeout: WAIT });
        assert(!fs.existsSync(path.join(CACHE, "big.img")), "big.img is cached before it was fetched");
        await page.click("#queue-prefetch");
        // The upstream stalls at 1 MiB: the Job's PropertiesChanged bring the page there.
        const bytes = await until(() => {
            const r = document.querySelector('#transfers-table tr[data-image-id="big.img"] td.bytes');
            return r && r.textContent === "1.0 MiB of 4.0 MiB" && r.textContent;
        });
        assert(bytes === "1.0 MiB of 4.0 MiB", bytes);
        assert(await page.$eval('#transfers-table tr[data-image-id="big.img"] .progress-label',
                                e => e.textContent) === "25%", "progress is not 25%");
        await shot("cockpit-transfer.png");
    });

    await check("the finished transfer leaves the image in the table and on disk", async () => {
        process.kill(Number(env("TEST_UPSTREAM_PID")), "SIGUSR1");
        await page.waitForSelector('#images-table tr[data-image-id="big.img"]', { timeout: WAIT });
        await until(() => document.querySelectorAll("#transfers-table tbody tr").length === 0 &&
                          document.querySelectorAll("#queue-table tbody tr").length === 0);
        assert(fs.statSync(path.join(CACHE, "big.img")).size === 4 * MiB, "big.img on disk is not 4 MiB");
        await until(() => document.getElementById("st-images").textContent === "4");
        await shot("cockpit-images.png");
    });

    await check("the table sorts by size, both ways", async () => {
        await page.click('th[data-sort="size"]');
        let rows = await imageRows();
        assert(JSON.stringify(rows) === JSON.stringify(["protected.img", "beta.img", "alpha.img", "big.img"]),
               "ascending: " + JSON.stringify(rows));
        await page.click('th[data-sort="size"]');
        rows = await imageRows();
        assert(JSON.stringify(rows) === JSON.stringify(["big.img", "alpha.img", "beta.img", "protected.img"]),
               "descending: " + JSON.stringify(rows));
        await page.click('th[data-sort="id"]');
    });

    await check("Verify reports the image intact", async () => {
        await page.click('#images-table tr[data-image-id="big.img"] button[data-action="verify"]');
        await notice("success", "big.img is intact");
    });

    await check("a delete polkit refuses shows the refusal, and the image stays", async () => {
        await page.click('#images-table tr[data-image-id="protected.img"] button[data-action="delete"]');
        await confirmDialog(["protected.img"]);
        const msg = await until(() => {
            const n = document.querySelector('#notices [data-error="org.freedesktop.DBus.Error.AccessDenied"]');
            return n && n.textContent;
        });
        assert(msg.includes("Not authorized") && msg.includes("org.imgcache.delete"), "refusal: " + msg);
        assert(!msg.includes("    at "), "a stack trace: " + msg);
        assert(fs.existsSync(path.join(CACHE, "protected.img")), "protected.img was deleted on disk");
        assert((await imageRows()).includes("protected.img"), "protected.img left the table");
        await shot("cockpit-refusal.png");
    });

    await check("Prune reports its count and the pruned image leaves the table and the disk", async () => {
        await page.click("#prune");
        const msg = await notice("success", "Prune");
        assert(msg.includes("removed 1 image, 1.0 MiB"), "prune said: " + msg);
        await until(() => !document.querySelector('#images-table tr[data-image-id="alpha.img"]'));
        assert(!fs.existsSync(path.join(CACHE, "alpha.img")), "alpha.img is still on disk");
        const rows = await imageRows();
        assert(JSON.stringify(rows) === JSON.stringify(["beta.img", "big.img", "protected.img"]),
               "after prune: " + JSON.stringify(rows));
    });

    await check("deleting several images, confirmed, removes them from the table and the disk", async () => {
        await page.click('#images-table tr[data-image-id="beta.img"] input[type="checkbox"]');
        await page.click('#images-table tr[data-image-id="big.img"] input[type="checkbox"]');
        await page.click("#delete-selected");
        await confirmDialog(["beta.img", "big.img"]);
        await notice("success", "deleted 2 images");
        await until(() => document.querySelectorAll("#images-table tbody tr").length === 1);
        assert(!fs.existsSync(path.join(CACHE, "beta.img")) && !fs.existsSync(path.join(CACHE, "big.img")),
               "deleted images are still on disk");
    });

    await check("another client's delete reaches the page by signal: the empty cache has its own state", async () => {
        gdbus("--dest", "org.imgcache.Manager", "--object-path", "/org/imgcache/Manager",
              "--method", "org.imgcache.Manager.DeleteImage", "protected.img");
        await page.waitForSelector('#app[data-empty="yes"] #images-empty:not([hidden])', { timeout: WAIT });
        // ImageCount follows by PropertiesChanged (counters are announced at most every 250 ms).
        await until(() => document.getElementById("st-images").textContent === "0");
        await shot("cockpit-empty.png");
    });

    await check("a bus that goes away has its own state", async () => {
        process.kill(Number(env("TEST_DBUS_PID")), "SIGTERM");
        await page.waitForSelector('#app[data-state="buserror"]', { timeout: WAIT });
        assert((await text("#buserror-message")).length > 0, "no message for the bus error");
        await shot("cockpit-bus-error.png");
    });

    await check("nothing the page did was refused by Cockpit's Content-Security-Policy", async () => {
        assert(cspErrors.length === 0, cspErrors.join("\n"));
    });

    console.log("1.." + n);
}

main().catch(() => process.exit(1));
