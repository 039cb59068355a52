// Opens a batch page of `runner report` in headless Chromium and reports, as one JSON object on
// stdout, what a person would see: whether every thumbnail loaded, how many cards each verdict
// filter leaves visible, requests that left the report folder, and script errors. Keeps a
// full-page screenshot.
//
//   node tests/browser/check_report.mjs PAGE.html SCREENSHOT.png
//
// Used by tests/report_browser.rs; the assertions live there.
import { pathToFileURL } from 'node:url';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const [pagePath, screenshot] = process.argv.slice(2);
if (!pagePath || !screenshot) {
  console.error('usage: check_report.mjs PAGE.html SCREENSHOT.png');
  process.exit(2);
}
const folder = pathToFileURL(dirname(pagePath)).href;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // A fresh profile comes from playwright itself; these keep Chromium off the network.
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const result = { requests_outside: [], errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('request', (req) => {
    if (!req.url().startsWith(folder + '/')) result.requests_outside.push(req.url());
  });
  page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') result.errors.push(`console ${m.type()}: ${m.text()}`);
  });
  await page.goto(pathToFileURL(pagePath).href, { waitUntil: 'load' });

  // Thumbnails load lazily: bring each into view and wait until it has decoded (or failed).
  result.images = await page.evaluate(async () => {
    const out = [];
    for (const img of Array.from(document.images)) {
      img.scrollIntoView();
      try {
        await img.decode();
      } catch (e) {
        // A broken image: naturalWidth stays 0.
      }
      out.push({ src: img.getAttribute('src'), naturalWidth: img.naturalWidth, complete: img.complete });
    }
    window.scrollTo(0, 0);
    return out;
  });

  const visible = async () => {
    const counts = {};
    for (const v of ['pass', 'review', 'block', 'failed', 'waiting']) {
      counts[v] = await page.locator(`figure.card.v-${v}:visible`).count();
    }
    counts.all = await page.locator('figure.card:visible').count();
    counts.shown_label = await page.locator('#shown').textContent();
    return counts;
  };
  result.total = {};
  for (const v of ['pass', 'review', 'block', 'failed', 'waiting']) {
    result.total[v] = await page.locator(`figure.card.v-${v}`).count();
    result.total[`label_${v}`] = await page.locator(`#count-${v}`).textContent();
  }
  result.before = await visible();
  await page.click('nav.filter button[data-only="pass"]');
  result.only_pass = await visible();
  await page.click('nav.filter button[data-only="all"]');
  await page.uncheck('nav.filter input[data-verdict="block"]');
  result.without_block = await visible();
  await page.check('nav.filter input[data-verdict="block"]');
  result.after = await visible();
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
