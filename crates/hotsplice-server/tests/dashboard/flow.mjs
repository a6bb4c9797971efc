// The dashboard in a real browser: Debian's chromium driven by
// playwright-core. Usage: node flow.mjs URL USER PASS OUTDIR SIMFILE
// (SIMFILE: the simulated machines, their keys and reports, made by
// tests/dashboard.rs; this script checks them in through the API).
// Saves a PNG of each main page into OUTDIR; exits non-zero on the first
// expectation that fails.
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, user, pass, outdir, simfile] = process.argv.slice(2);
const pw = process.env.HOTSPLICE_PLAYWRIGHT;
if (!pw) throw new Error("HOTSPLICE_PLAYWRIGHT (the playwright-core directory) is not set");
const { chromium } = createRequire(import.meta.url)(pw);
const sim = JSON.parse(readFileSync(simfile, "utf8"));

function expect(cond, what) {
  if (!cond) throw new Error("expectation failed: " + what);
  console.log("ok: " + what);
}

async function checkin(m, report) {
  const r = await fetch(`${url}/api/v2/machines/${m.uuid}/checkin`, {
    method: "POST",
    headers: { Authorization: `Bearer ${m.key}`, "Content-Type": "application/json" },
    body: JSON.stringify(report),
  });
  if (!r.ok) throw new Error(`check-in of ${m.uuid}: ${r.status} ${await r.text()}`);
}

const profile = mkdtempSync(join(tmpdir(), "hotsplice-chromium-"));
// A fresh profile (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
  ],
});
try {
  const page = browser.pages()[0] || (await browser.newPage());
  const shot = async (name) => {
    await page.screenshot({ path: join(outdir, name + ".png"), fullPage: true });
    console.log("screenshot: " + join(outdir, name + ".png"));
  };
  // Log in.
  await page.goto(url + "/ui/");
  expect(page.url().endsWith("/ui/login"), "no session: the login page");
  await page.fill("#user", user);
  await page.fill("#password", "wrong password");
  await page.click("#login");
  expect((await page.content()).includes("wrong password"), "a wrong password is refused");
  await page.fill("#user", user);
  await page.fill("#password", pass);
  await shot("01-login");
  await page.click("#login");
  await page.waitForSelector("#machines");
  const all = await page.textContent("#count-all .n");
  expect(Number(all) === sim.machines.length, `the overview counts ${sim.machines.length} machines (${all})`);
  expect(Number(await page.textContent("#count-pending .n")) === 1, "one pending machine");
  await shot("02-overview");
  // Filter by CVE.
  await page.fill("#filter-cve", sim.cve);
  await page.click("#apply");
  await page.waitForSelector("#machines");
  const rows = await page.$$("#machines tbody tr[data-uuid]");
  expect(rows.length === sim.cve_machines, `filtered by ${sim.cve}: ${sim.cve_machines} machines (${rows.length})`);
  await shot("03-filtered-by-cve");
  await page.click(`a[href="/ui/cves/${sim.cve}"]`);
  await page.waitForSelector("#protected");
  expect(Number(await page.textContent("#protected-count")) === sim.cve_protected, "the CVE page counts the protected");
  await shot("04-cve");
  // Open the pending machine and authorize it.
  await page.goto(url + "/ui/?status=pending");
  await page.click(`#machines a[href="/ui/machines/${sim.pending}"]`);
  await page.waitForSelector("#facts");
  expect((await page.textContent("#authorization")).trim() === "pending", "the machine is pending");
  await page.selectOption("#authorization-select", "allowed");
  await page.click("#authorize");
  await page.waitForSelector("#facts");
  expect((await page.textContent("#authorization")).trim() === "allowed", "authorized");
  await shot("05-machine");
  // Start a rollout canary -> web, healthy for 0 s.
  await page.goto(url + "/ui/rollouts");
  await page.selectOption("#rollout-patch", sim.rollout_sha);
  await page.fill("#rollout-stages", "canary,web");
  await page.fill("#rollout-soak", "0");
  await page.click("#start-rollout");
  await page.waitForSelector("#rollouts tr[data-rollout]");
  const state = async () => (await page.textContent("#rollouts tr[data-rollout] .state")).trim();
  expect((await state()).startsWith("running (stage 1/2)"), "the rollout runs stage 1: " + (await state()));
  await shot("06-rollout-started");
  // The canaries report success: stage 2 starts.
  for (const m of sim.machines.filter((m) => m.group === "canary")) await checkin(m, m.ok);
  await page.reload();
  expect((await state()).startsWith("running (stage 2/2)"), "the canaries' reports start stage 2: " + (await state()));
  await shot("07-rollout-advanced");
  // A web machine reports a failure: paused, and it says where.
  const web = sim.machines.find((m) => m.group === "web" && m.fail);
  await checkin(web, web.fail);
  await page.reload();
  expect((await state()).startsWith("paused"), "a failure pauses the rollout: " + (await state()));
  const msg = await page.textContent("#rollouts tr[data-rollout] .message");
  expect(msg.includes(web.uuid) && msg.includes("failed"), "the pause says where: " + msg);
  expect((await page.$$("button.resume")).length === 1, "an operator may resume");
  await shot("08-rollout-paused");
  await page.goto(url + "/ui/audit");
  expect((await page.content()).includes("/ui/rollouts"), "the audit log shows the rollout");
  const serverRows = await page.$$eval("#audit tbody tr", (rows) =>
    rows.map((r) => Array.from(r.cells).map((c) => c.textContent.trim())).filter((c) => c[2] === "server").map((c) => c[4]));
  expect(JSON.stringify(serverRows) === JSON.stringify(["rollout pause", "rollout advance"]),
    "the audit log (newest first) shows the server's own stage changes: " + JSON.stringify(serverRows));
  await shot("09-audit");
  // A read-only user sees no buttons.
  await page.click("#logout");
  await page.waitForSelector("#login");
  await page.fill("#user", sim.readonly_user);
  await page.fill("#password", pass);
  await page.click("#login");
  await page.waitForSelector("#machines");
  await page.goto(url + "/ui/rollouts");
  expect((await page.$$("button.resume, button.rollback, #start-rollout")).length === 0, "read-only: no rollout buttons");
  await page.goto(url + `/ui/machines/${sim.pending}`);
  expect((await page.$$("#authorize")).length === 0, "read-only: no authorize button");
  await shot("10-read-only-machine");
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log("dashboard flow passed");
