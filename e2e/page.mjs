// End-to-end check of the web page in headless Chromium: starts `fashion serve`, uploads two
// photos through the page's file picker, and checks that the page shows, for each, the category
// and colour names that `fashion classify` gives for the same file; then saves a screenshot.
//
// Usage: node page.mjs FASHION_BINARY SCREENSHOT.png PHOTO1 PHOTO2
import { spawn, execFileSync } from "node:child_process";
import { basename } from "node:path";
import { chromium } from "playwright-core";

const [fashion, screenshot, ...photos] = process.argv.slice(2);
if (!fashion || !screenshot || photos.length !== 2) {
  console.error("usage: node page.mjs FASHION_BINARY SCREENSHOT.png PHOTO1 PHOTO2");
  process.exit(2);
}

function fail(msg) {
  console.error("FAIL: " + msg);
  process.exitCode = 1;
}

const expected = JSON.parse(
  execFileSync(fashion, ["classify", "--format", "json", ...photos], { encoding: "utf8" }),
);

const server = spawn(fashion, ["serve", "--listen", "127.0.0.1:0"], {
  stdio: ["ignore", "ignore", "pipe"],
});
const url = await new Promise((resolve, reject) => {
  let text = "";
  const timer = setTimeout(() => reject(new Error("server did not start: " + text)), 60000);
  server.stderr.on("data", (d) => {
    text += d;
    const m = text.match(/serving on (http:\/\/\S+)/);
    if (m) { clearTimeout(timer); resolve(m[1]); }
  });
  server.on("exit", (code) => reject(new Error("server exited with " + code + ": " + text)));
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.on("pageerror", (e) => fail("page error: " + e));
  await page.goto(url);
  // Everything the page needs comes from the server itself.
  const external = await page.evaluate(() =>
    performance.getEntriesByType("resource").filter((r) => !r.name.startsWith(location.origin)).length);
  if (external) fail(external + " resources loaded from elsewhere");

  await page.setInputFiles("#files", photos);
  await page.waitForSelector(".card >> nth=1", { timeout: 60000 });
  for (const want of expected) {
    const name = basename(want.path);
    const card = page.locator(".card", { has: page.locator(".name", { hasText: name }) });
    if ((await card.count()) !== 1) { fail("no card for " + name); continue; }
    const cats = await card.locator(".bar.category .label").allTextContents();
    if (cats[0] !== want.category.label) {
      fail(`${name}: page says category ${cats[0]}, fashion classify says ${want.category.label}`);
    }
    const primary = await card.locator(".primary").textContent();
    if (!primary.includes(want.colour.primary.name)) {
      fail(`${name}: page says "${primary}", fashion classify says colour ${want.colour.primary.name}`);
    }
    const swatches = await card.locator(".swatch-name").allTextContents();
    for (const s of want.colour.palette) {
      if (!swatches.some((t) => t.startsWith(s.name + " " + s.hex))) {
        fail(`${name}: swatch ${s.name} ${s.hex} missing from ${JSON.stringify(swatches)}`);
      }
    }
    console.log(`ok ${name}: ${cats[0]}, ${primary}`);
  }

  // The heat maps switch on from the keyboard.
  await page.focus("#heatmap");
  await page.keyboard.press("Space");
  const shown = await page.locator(".heat:not([hidden])").count();
  if (shown !== 2) fail(`${shown} heat maps shown after switching them on, expected 2`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("screenshot: " + screenshot);
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
