// Drives the demo page's <voice-widget> in Debian's Chromium (playwright-core, no browser
// download) through a list of steps, printing one JSON line per finished step:
//
//   node drive_widget.mjs '{"url": ..., "steps": [...], ...}'
//
// config: url, audioFile (WAV fed to the fake microphone; omitted: Chromium's beep),
//   microphone ("grant" | "deny" | "none": no fake device, only the machine's own),
//   noWebRTC (hide RTCPeerConnection: a browser without
//   WebRTC), userDataDir, failureScreenshot.
// steps: {do: "click"} | {do: "screenshot", path}
//        | {do: "wait", until: "reply" | "speaking" | "error" | "state", state, timeoutMs}
// Each line: {step, ok, snapshot} (snapshot: the widget's snapshot(): what a person sees,
// and the levels its meters measured). A failed step prints {step, ok: false, error} and
// exits 1.

import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);

function chromiumArgs() {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
  ];
  if (config.microphone === "deny") args.push("--deny-permission-prompts");
  else args.push("--use-fake-ui-for-media-stream");
  if (config.microphone !== "none") args.push("--use-fake-device-for-media-stream");
  if (config.audioFile) args.push(`--use-file-for-fake-audio-capture=${config.audioFile}`);
  return args;
}

const conditions = {
  reply: (s) => s.responsesDone >= 1 && s.turns >= 1 && s.replyAudibleMs >= 500,
  error: (s) => s.state === "error" && s.error !== "",
  state: (s, step) => s.state === step.state,
  speaking: (s) => s.turns >= 1 && s.replyDb > -40,
};

async function snapshot(page) {
  return page.evaluate(() => document.querySelector("voice-widget").snapshot());
}

async function waitFor(page, step) {
  const deadline = Date.now() + (step.timeoutMs || 60000);
  let last = null;
  while (Date.now() < deadline) {
    last = await snapshot(page);
    if (conditions[step.until](last, step)) return last;
    await page.waitForTimeout(200);
  }
  throw Object.assign(new Error(`timed out waiting for ${step.until} ${step.state || ""}`), { last });
}

async function run(page, step) {
  if (step.do === "click") {
    await page.locator("voice-widget button").click();
    return snapshot(page);
  }
  if (step.do === "wait") return waitFor(page, step);
  if (step.do === "screenshot") {
    await page.screenshot({ path: step.path, fullPage: true });
    return snapshot(page);
  }
  throw new Error(`unknown step ${JSON.stringify(step)}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium", headless: true, args: chromiumArgs(),
});
const consoleLines = [];
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 720, height: 760 } });
  const page = await context.newPage();
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
  page.on("requestfailed", (request) => consoleLines.push(`failed: ${request.url()}`));
  page.on("response", (response) => {
    if (response.status() >= 400) consoleLines.push(`http ${response.status()}: ${response.url()}`);
  });
  if (config.noWebRTC) {
    await page.addInitScript(() => {
      delete window.RTCPeerConnection;
      delete window.webkitRTCPeerConnection;
    });
  }
  await page.goto(config.url);
  await page.waitForFunction(() => customElements.get("voice-widget") !== undefined);
  for (const [index, step] of config.steps.entries()) {
    try {
      const result = await run(page, step);
      console.log(JSON.stringify({ step: index, ok: true, snapshot: result }));
    } catch (error) {
      if (config.failureScreenshot) {
        await page.screenshot({ path: config.failureScreenshot, fullPage: true }).catch(() => {});
      }
      console.log(JSON.stringify({ step: index, ok: false, error: error.message,
                                   snapshot: error.last || null, console: consoleLines }));
      exitCode = 1;
      break;
    }
  }
  if (exitCode === 0) console.log(JSON.stringify({ done: true, console: consoleLines }));
} finally {
  await browser.close();
}
process.exit(exitCode);
