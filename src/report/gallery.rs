//! `runner report`: one page per batch, streamed from the store to disk.
//!
//! Cards come from [`Store::report_cells`] in report order; thumbnails are made a few at a time
//! on blocking threads (in order, so the page is written as the cells arrive); the page is
//! written to a temporary file beside `index.html` and renamed over it at the end. Memory holds
//! the groups' column lists, a few cells in flight and one buffer of HTML, whatever the batch's
//! size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;

use super::html::{self, esc, url_path};
use super::thumb::{self, ThumbError, ThumbOutcome};
use super::{Cell, Group, ReportError, RunRecord};
use crate::api::Size;
use crate::archive::{self, LocalArchive, atomic};
use crate::store::{BatchStatus, ImageState, ItemState, Store};

/// What to generate, and where.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The report folder.
    pub out: PathBuf,
    /// The archive root the images are read from.
    pub archive: PathBuf,
    /// Only this batch (the top-level index still lists every batch).
    pub batch: Option<String>,
    /// Long side of thumbnails, in pixels.
    pub thumb_side: u32,
    /// Thumbnails made at once.
    pub jobs: usize,
}

/// What was generated for one batch.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BatchReport {
    /// Batch name.
    pub batch: String,
    /// Its page.
    pub page: PathBuf,
    /// Cards on the page (images, and items without images).
    pub cards: u64,
    /// Thumbnails made.
    pub thumbs_made: u64,
    /// Thumbnails already up to date.
    pub thumbs_unchanged: u64,
    /// Archived images whose file is missing or does not decode (shown as placeholders).
    pub thumbs_failed: u64,
    /// The first few of those problems, for the user.
    pub problems: Vec<String>,
}

/// What `generate` wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReportSummary {
    /// The top-level index.
    pub index: PathBuf,
    /// Per batch.
    pub batches: Vec<BatchReport>,
}

/// Most problems kept per batch for the summary (all of them are on the page).
const MAX_PROBLEMS: usize = 10;
/// HTML is flushed to disk whenever this much is buffered.
const FLUSH_BYTES: usize = 256 * 1024;
/// Most bars of the time line.
const MAX_TIMELINE_BINS: usize = 720;

/// Writes the report: a page per batch (or for `opts.batch` alone) and the top-level index.
pub async fn generate(
    store: &dyn Store,
    opts: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    let all = store.batches().await?;
    let chosen: Vec<String> = match &opts.batch {
        Some(b) if !all.contains(b) => return Err(ReportError::NoSuchBatch(b.clone())),
        Some(b) => vec![b.clone()],
        None => all.clone(),
    };
    create_dir(&opts.out)?;
    let statuses = store.status().await?;
    let mut summary = ReportSummary {
        index: opts.out.join("index.html"),
        batches: Vec::new(),
    };
    for batch in &chosen {
        let status = statuses
            .iter()
            .find(|s| &s.batch == batch)
            .cloned()
            .unwrap_or_default();
        summary
            .batches
            .push(batch_page(store, opts, batch, &status).await?);
    }
    let mut index = String::new();
    index_page(&mut index, &statuses, &opts.out);
    super::write_public(&summary.index, index.as_bytes())?;
    Ok(summary)
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReportError + 'a {
    move |source| ReportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(io_at("create folder", dir))
}

/// Local time of `ms` for people: `2026-11-21 10:23`.
fn local_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

fn local_offset() -> String {
    chrono::Local::now().format("%:z").to_string()
}

/// A page written to a temporary file beside its destination, renamed into place when done.
struct PageFile {
    dest: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
}

impl PageFile {
    fn create(dest: PathBuf) -> Result<PageFile, ReportError> {
        let tmp = atomic::temp_for(&dest, None, atomic::Mode::Public)?;
        Ok(PageFile {
            dest,
            file: BufWriter::new(tmp),
        })
    }

    fn write(&mut self, html: &mut String) -> Result<(), ReportError> {
        self.file
            .write_all(html.as_bytes())
            .map_err(io_at("write", &self.dest))?;
        html.clear();
        Ok(())
    }

    fn commit(self) -> Result<(), ReportError> {
        let dest = self.dest;
        let tmp = self
            .file
            .into_inner()
            .map_err(|e| io_at("write", &dest)(e.into_error()))?;
        Ok(atomic::commit(tmp, &dest, true)?)
    }
}

/// The thumbnail of a card, as far as the page needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Thumb {
    /// No image to show (placeholder by the cell's state).
    None,
    /// A thumbnail of this size is at `thumbs/<key>-<n>.png`.
    Ready(Size),
    /// The archived file could not be read; the reason.
    Failed(String),
}

async fn batch_page(
    store: &dyn Store,
    opts: &ReportOptions,
    batch: &str,
    status: &BatchStatus,
) -> Result<BatchReport, ReportError> {
    let archive = LocalArchive::new(&opts.archive);
    // Checks the name before it names folders.
    archive.batch_dir(batch)?;
    let dir = opts.out.join(batch);
    let thumbs = dir.join("thumbs");
    create_dir(&thumbs)?;
    let pivots: BTreeMap<String, String> = store
        .report_templates(batch)
        .await?
        .into_iter()
        .filter_map(|(t, columns)| super::pivot_var(&t, columns).map(|v| (t, v)))
        .collect();
    let groups = store.report_groups(batch, &pivots).await?;
    let minutes = store.report_timeline(batch).await?;
    let runs = match (minutes.first(), minutes.last()) {
        (Some(a), Some(b)) => {
            store
                .runs_between(a.minute_ms, b.minute_ms + 60_000)
                .await?
        }
        _ => Vec::new(),
    };
    let archive_href = archive
        .batch_dir(batch)
        .ok()
        .and_then(|a| relative_dir(&dir, &a));

    let mut report = BatchReport {
        batch: batch.to_string(),
        page: dir.join("index.html"),
        ..BatchReport::default()
    };
    let mut page = PageFile::create(report.page.clone())?;
    let mut out = String::with_capacity(FLUSH_BYTES * 2);
    html::page_head(&mut out, &format!("{batch} — runner report"));
    batch_header(&mut out, batch, status, &minutes, &runs);
    filter_nav(&mut out);
    out.push_str("<main>\n");
    page.write(&mut out)?;

    let side = opts.thumb_side.max(16);
    let pool =
        thumb::ThumbPool::new(opts.jobs).map_err(io_at("start thumbnail threads for", &dir))?;
    let pool = &pool;
    let mut grid = GridWriter::new(&groups, archive_href);
    let mut cells = store
        .report_cells(batch, &pivots)
        .map(|cell| {
            let archive = archive.clone();
            let thumbs = thumbs.clone();
            async move {
                let cell = cell?;
                let thumb = make_thumb(pool, &archive, &thumbs, batch, &cell, side).await?;
                Ok::<_, ReportError>((cell, thumb))
            }
        })
        .buffered(opts.jobs.max(1));
    while let Some(next) = cells.next().await {
        let (cell, (thumb, outcome)) = next?;
        match outcome {
            Some(ThumbOutcome::Made) => report.thumbs_made += 1,
            Some(ThumbOutcome::Unchanged) => report.thumbs_unchanged += 1,
            None => {}
        }
        if let Thumb::Failed(reason) = &thumb {
            report.thumbs_failed += 1;
            if report.problems.len() < MAX_PROBLEMS {
                report.problems.push(reason.clone());
            }
        }
        report.cards += 1;
        grid.cell(&cell, &thumb);
        if grid.out.len() >= FLUSH_BYTES {
            page.write(&mut grid.out)?;
        }
    }
    grid.finish();
    page.write(&mut grid.out)?;
    out.push_str("</main>\n");
    html::page_tail(&mut out, true);
    page.write(&mut out)?;
    page.commit()?;
    Ok(report)
}

/// Makes (or finds up to date) the thumbnail of an archived image.
async fn make_thumb(
    pool: &thumb::ThumbPool,
    archive: &LocalArchive,
    thumbs: &Path,
    batch: &str,
    cell: &Cell,
    side: u32,
) -> Result<(Thumb, Option<ThumbOutcome>), ReportError> {
    let Some(img) = &cell.image else {
        return Ok((Thumb::None, None));
    };
    let (ImageState::Archived, Some(rel), Some(sha)) = (img.state, &img.path, &img.sha256) else {
        return Ok((Thumb::None, None));
    };
    if !cell.key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(archive::ArchiveError::Unsafe(format!("item key {:?}", cell.key)).into());
    }
    let source = archive.resolve(batch, rel)?;
    let dest = thumbs.join(format!("{}-{}.png", cell.key, img.index));
    let sha = sha.clone();
    let result = pool.ensure(source, sha, dest, side).await;
    let size = thumb::thumb_size(cell.size, side);
    match result {
        Ok(outcome) => Ok((Thumb::Ready(size), Some(outcome))),
        Err(ThumbError::Write { path, source }) => Err(ReportError::Io {
            op: "write thumbnail",
            path: PathBuf::from(path),
            source,
        }),
        // Named relative to the archive root: the page does not show where the archive lives.
        Err(e) if e.is_missing_source() => Ok((
            Thumb::Failed(format!("{batch}/{rel} is missing from the archive")),
            None,
        )),
        Err(ThumbError::Decode { reason, .. }) => Ok((
            Thumb::Failed(format!("{batch}/{rel} does not decode as PNG ({reason})")),
            None,
        )),
        Err(ThumbError::Read { source, .. }) => Ok((
            Thumb::Failed(format!("{batch}/{rel} cannot be read ({source})")),
            None,
        )),
    }
}

/// The path from folder `from` to folder `to`, as a URL prefix ending in `/` (both are made
/// absolute first; `None` when either does not exist).
fn relative_dir(from: &Path, to: &Path) -> Option<String> {
    let from = fs::canonicalize(from).ok()?;
    let to = fs::canonicalize(to).ok()?;
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); a.len() - common];
    for c in &b[common..] {
        parts.push(c.as_os_str().to_str()?.to_string());
    }
    let mut s = parts.join("/");
    if !s.is_empty() {
        s.push('/');
    }
    Some(url_path(&s))
}

fn counts_table(out: &mut String, title: &str, rows: &[(String, i64)]) {
    let _ = write!(out, "<table><tr><th colspan=\"2\">{}</th></tr>", esc(title));
    for (k, v) in rows {
        let _ = write!(out, "<tr><td>{}</td><td class=\"n\">{v}</td></tr>", esc(k));
    }
    out.push_str("</table>\n");
}

fn batch_header(
    out: &mut String,
    batch: &str,
    s: &BatchStatus,
    minutes: &[super::TimelineBin],
    runs: &[RunRecord],
) {
    let total: i64 = s.items.values().sum();
    let _ = writeln!(
        out,
        "<header><h1>Batch <code>{b}</code></h1><p class=\"dim\">generated {now} (local time, UTC{off}) · \
         <a href=\"../index.html\">all batches</a></p></header>",
        b = esc(batch),
        now = local_minute(crate::api::now_ms()),
        off = local_offset(),
    );
    out.push_str("<section id=\"totals\"><h2>Totals</h2><div class=\"totals\">\n");
    let mut items: Vec<(String, i64)> = ItemState::ALL
        .iter()
        .map(|st| {
            (
                st.as_str().to_string(),
                s.items.get(st.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    items.push(("total".into(), total));
    counts_table(out, "items", &items);
    let mut images = vec![("requested".to_string(), s.images_requested)];
    images.extend(ImageState::ALL.iter().map(|st| {
        (
            st.as_str().to_string(),
            s.images.get(st.as_str()).copied().unwrap_or(0),
        )
    }));
    counts_table(out, "images", &images);
    let verdicts: Vec<(String, i64)> = ["pass", "review", "block"]
        .iter()
        .map(|v| (v.to_string(), s.verdicts.get(*v).copied().unwrap_or(0)))
        .collect();
    counts_table(out, "verdicts", &verdicts);
    if !s.failed_by_class.is_empty() {
        let failed: Vec<(String, i64)> = s
            .failed_by_class
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counts_table(out, "failed items by error class", &failed);
    }
    let slack = s
        .min_slack_ms
        .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "—".into());
    let _ = writeln!(
        out,
        "<table><tr><th colspan=\"2\">submits</th></tr><tr><td>ambiguous (resubmitted)</td><td class=\"n\">{}</td></tr>\
         <tr><td>least URL slack at archive time</td><td class=\"n\">{slack}</td></tr></table>",
        s.ambiguous_items
    );
    out.push_str("</div></section>\n");

    out.push_str("<section id=\"timeline\"><h2>Time line</h2>\n");
    match html::timeline(minutes, MAX_TIMELINE_BINS) {
        None => out.push_str("<p class=\"empty\">Nothing submitted yet.</p>\n"),
        Some(t) => {
            let per = if t.minutes_per_bin == 1 {
                "minute".to_string()
            } else {
                format!("{} minutes", t.minutes_per_bin)
            };
            let end = t.start_ms + t.bins.len() as i64 * t.minutes_per_bin * 60_000;
            let _ = writeln!(
                out,
                "<div class=\"chart\"><p><span class=\"key s\"></span> submitted &nbsp; <span class=\"key f\"></span> finished \
                 &nbsp; <span class=\"key x\"></span> failed &nbsp; <span class=\"dim\">per {per}; the tallest bar is {max}</span></p>\
                 {svg}<div class=\"axis\">from {a} to {b} (UTC{off})</div></div>",
                max = t
                    .bins
                    .iter()
                    .map(|b| b.submitted.max(b.finished + b.failed))
                    .max()
                    .unwrap_or(0),
                svg = html::timeline_svg(&t, local_minute),
                a = local_minute(t.start_ms),
                b = local_minute(end),
                off = local_offset(),
            );
        }
    }
    if !runs.is_empty() {
        out.push_str(
            "<table class=\"runs\"><tr><th>run</th><th>command</th><th>started</th><th>ended</th><th>exit code</th></tr>\n",
        );
        for r in runs {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.id,
                esc(&r.command),
                local_minute(r.started_at),
                r.ended_at.map(local_minute).unwrap_or_else(|| "—".into()),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "—".into())
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
}

fn filter_nav(out: &mut String) {
    out.push_str("<nav class=\"filter\" aria-label=\"verdict filter\"><strong>Show</strong>\n");
    for (class, label) in html::FILTER_CLASSES {
        let _ = writeln!(
            out,
            "<label><input type=\"checkbox\" data-verdict=\"{class}\" checked> <span class=\"badge b-{class}\">{label}</span> \
             <span id=\"count-{class}\" class=\"dim\"></span></label>"
        );
    }
    out.push_str("<span>only:</span>");
    for (class, label) in html::FILTER_CLASSES {
        let _ = write!(
            out,
            "<button type=\"button\" data-only=\"{class}\">{label}</button>"
        );
    }
    out.push_str(
        "<button type=\"button\" data-only=\"all\">all</button> <span class=\"dim\"><span id=\"shown\"></span> shown</span></nav>\n",
    );
}

/// Writes the grid of a batch's cards, group by group, as the cells arrive in report order.
pub(crate) struct GridWriter<'a> {
    groups: &'a [Group],
    /// HTML written so far and not yet taken.
    pub(crate) out: String,
    /// Group, row and column currently open.
    group: Option<u32>,
    row: Option<u32>,
    column: Option<u32>,
    /// Columns of the current row already written.
    next_column: u32,
    /// The current group is a single column: cards flow without a table.
    flow: bool,
    /// Template vars of the current group, in template order.
    var_names: Vec<String>,
    several_variants: bool,
    /// URL prefix from the page to the batch's archive folder.
    archive_href: Option<String>,
}

impl<'a> GridWriter<'a> {
    pub(crate) fn new(groups: &'a [Group], archive_href: Option<String>) -> GridWriter<'a> {
        GridWriter {
            groups,
            out: String::new(),
            group: None,
            row: None,
            column: None,
            next_column: 0,
            flow: false,
            var_names: Vec::new(),
            several_variants: false,
            archive_href,
        }
    }

    fn current(&self) -> Option<&'a Group> {
        self.group.and_then(|g| self.groups.get(g as usize))
    }

    pub(crate) fn cell(&mut self, cell: &Cell, thumb: &Thumb) {
        if self.group != Some(cell.group) {
            self.close_group();
            self.open_group(cell);
        }
        if !self.flow {
            if self.row != Some(cell.row) {
                self.close_row();
                self.open_row(cell);
            }
            if self.column != Some(cell.column) {
                self.close_column();
                while self.next_column < cell.column {
                    self.out.push_str("<td class=\"empty\">—</td>");
                    self.next_column += 1;
                }
                self.out.push_str("<td><div class=\"cards\">");
                self.column = Some(cell.column);
                self.next_column = cell.column + 1;
            }
        }
        card(&mut self.out, cell, thumb, self.archive_href.as_deref());
    }

    pub(crate) fn finish(&mut self) {
        let any = self.group.is_some();
        self.close_group();
        if !any {
            self.out
                .push_str("<p class=\"empty\">This batch has no items.</p>\n");
        }
    }

    fn open_group(&mut self, cell: &Cell) {
        self.group = Some(cell.group);
        self.row = None;
        self.column = None;
        let Some(g) = self.current() else {
            // Not in the list (the batch changed between the two queries): a plain flow.
            self.flow = true;
            self.out
                .push_str("<section class=\"group\"><div class=\"flow\">");
            return;
        };
        self.flow = g.pivot.is_none() && g.columns.len() <= 1;
        self.several_variants = g.columns.iter().any(|c| c.variant != g.columns[0].variant);
        self.var_names = g
            .template
            .as_deref()
            .map(|t| var_order(t, cell.vars.keys()))
            .unwrap_or_default();
        if let Some(p) = &g.pivot {
            self.var_names.retain(|n| n != &p.var);
        }
        let _ = write!(self.out, "<section class=\"group\" id=\"g{}\">", cell.group);
        match &g.template {
            Some(t) => {
                let _ = write!(self.out, "<h2>Template <code>{}</code></h2>", esc(t));
            }
            None => self.out.push_str("<h2>Prompts</h2>"),
        }
        let sizes: Vec<String> = g
            .columns
            .iter()
            .map(|c| html::column_label(c, self.several_variants))
            .collect();
        let labels: Vec<String> = match &g.pivot {
            Some(p) => p.values.iter().map(|v| format!("{}: {v}", p.var)).collect(),
            None => sizes.clone(),
        };
        let _ = writeln!(
            self.out,
            "<p class=\"dim\">{} item{} · {} row{} × {} column{}{}</p>",
            g.items,
            plural(g.items),
            g.rows,
            plural(g.rows),
            labels.len(),
            plural(labels.len() as u32),
            if self.flow || g.pivot.is_some() {
                format!(" · {}", esc(&sizes.join(", ")))
            } else {
                String::new()
            }
        );
        if self.flow {
            self.out.push_str("<div class=\"flow\">");
            return;
        }
        self.out.push_str("<table class=\"grid\"><thead><tr>");
        if self.var_names.is_empty() {
            self.out.push_str("<th>prompt</th>");
        }
        for name in &self.var_names {
            let _ = write!(self.out, "<th>{}</th>", esc(name));
        }
        for l in &labels {
            let _ = write!(self.out, "<th>{}</th>", esc(l));
        }
        self.out.push_str("</tr></thead><tbody>\n");
    }

    fn close_group(&mut self) {
        if self.group.is_none() {
            return;
        }
        if self.flow {
            self.out.push_str("</div></section>\n");
        } else {
            self.close_row();
            self.out.push_str("</tbody></table></section>\n");
        }
        self.group = None;
    }

    fn open_row(&mut self, cell: &Cell) {
        self.row = Some(cell.row);
        self.column = None;
        self.next_column = 0;
        self.out.push_str("<tr>");
        if self.var_names.is_empty() {
            let _ = write!(self.out, "<th>{}</th>", esc(&cell.prompt));
        }
        for name in &self.var_names {
            let v = cell.vars.get(name).map(String::as_str).unwrap_or("");
            let _ = write!(
                self.out,
                "<th title=\"{}\">{}</th>",
                esc(&cell.prompt),
                if v.is_empty() {
                    "<span class=\"dim\">(empty)</span>".to_string()
                } else {
                    esc(v).to_string()
                }
            );
        }
    }

    fn close_column(&mut self) {
        if self.column.take().is_some() {
            self.out.push_str("</div></td>");
        }
    }

    fn close_row(&mut self) {
        if self.row.is_none() {
            return;
        }
        self.close_column();
        let total = self
            .current()
            .map(|g| match &g.pivot {
                Some(p) => p.values.len() as u32,
                None => g.columns.len() as u32,
            })
            .unwrap_or(0);
        while self.next_column < total {
            self.out.push_str("<td class=\"empty\">—</td>");
            self.next_column += 1;
        }
        self.out.push_str("</tr>\n");
        self.row = None;
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The vars of a template in the order their placeholders first appear in it; vars the template
/// does not name come last, by name.
pub(crate) fn var_order<'k>(
    template: &str,
    names: impl Iterator<Item = &'k String>,
) -> Vec<String> {
    let mut found: Vec<(usize, String)> = names
        .map(|n| {
            let at = template.find(&format!("{{{n}}}")).unwrap_or(usize::MAX);
            (at, n.clone())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

/// One card: the thumbnail (or a placeholder saying why there is none), the verdict badge, the
/// size, the prompt, the tags, and the reason for a placeholder.
fn card(out: &mut String, cell: &Cell, thumb: &Thumb, archive_href: Option<&str>) {
    let (class, badge, word, reason): (&str, String, &str, Option<String>) = match (
        &cell.image,
        thumb,
    ) {
        (Some(img), Thumb::Ready(_)) => {
            (img.verdict.as_str(), img.verdict.as_str().into(), "", None)
        }
        (Some(img), Thumb::Failed(why)) => (
            img.verdict.as_str(),
            img.verdict.as_str().into(),
            "missing",
            Some(format!(
                "archived, but {why}; `runner verify` fetches it again"
            )),
        ),
        (Some(img), Thumb::None) => {
            let (word, reason) = match img.state {
                ImageState::Skipped => (
                    if img.verdict.as_str() == "block" {
                        "blocked"
                    } else {
                        "not kept"
                    },
                    format!(
                        "not kept: the batch's archive policy skips {} images (the verdict is recorded)",
                        img.verdict.as_str()
                    ),
                ),
                ImageState::Lost => (
                    "lost",
                    format!(
                        "lost: {}",
                        img.error
                            .as_deref()
                            .unwrap_or("its URL expired before it was downloaded")
                    ),
                ),
                ImageState::Listed => (
                    "not yet",
                    match &img.error {
                        Some(e) => format!("not downloaded yet (last attempt: {e})"),
                        None => "not downloaded yet".into(),
                    },
                ),
                ImageState::Archived => ("missing", "archived, but not on record".into()),
            };
            (
                img.verdict.as_str(),
                img.verdict.as_str().into(),
                word,
                Some(reason),
            )
        }
        (None, _) => {
            let state = cell.state.as_str();
            if cell.state == ItemState::Failed {
                let reason = cell
                    .failure
                    .as_ref()
                    .map(|f| match f.code {
                        Some(code) => format!("failed ({} {code}): {}", f.class, f.message),
                        None => format!("failed ({}): {}", f.class, f.message),
                    })
                    .unwrap_or_else(|| "failed".into());
                ("failed", "failed".into(), "failed", Some(reason))
            } else {
                let reason = cell
                    .failure
                    .as_ref()
                    .map(|f| format!("{state}; last error: {}", f.message));
                ("waiting", state.into(), state, reason)
            }
        }
    };
    let index = cell.image.as_ref().map(|i| i.index);
    let id = match index {
        Some(i) => format!("{}-{i}", cell.key),
        None => cell.key.clone(),
    };
    let _ = write!(
        out,
        "<figure class=\"card v-{class}\" id=\"c-{}\">",
        esc(&id)
    );
    match (thumb, &cell.image) {
        (Thumb::Ready(size), Some(img)) => {
            let img_tag = format!(
                "<img src=\"thumbs/{}\" width=\"{}\" height=\"{}\" alt=\"{}\" loading=\"lazy\" decoding=\"async\">",
                url_path(&format!("{}-{}.png", cell.key, img.index)),
                size.width,
                size.height,
                esc(&cell.prompt)
            );
            match (archive_href, &img.path) {
                (Some(href), Some(path)) => {
                    let _ = write!(out, "<a href=\"{}{}\">{img_tag}</a>", href, url_path(path));
                }
                _ => out.push_str(&img_tag),
            }
        }
        _ => out.push_str(&html::placeholder_svg(
            super::thumb::thumb_size(cell.size, 200),
            class,
            word,
        )),
    }
    let _ = write!(
        out,
        "<figcaption><span class=\"badge b-{class}\">{}</span> <span class=\"dim\">{} · {} · variant {}",
        esc(&badge),
        cell.size,
        cell.version,
        cell.variant
    );
    if let Some(i) = index {
        let _ = write!(out, " · image {}/{}", i + 1, cell.image_num);
    } else if cell.image_num > 1 {
        let _ = write!(out, " · {} images", cell.image_num);
    }
    let _ = write!(
        out,
        "</span><div class=\"prompt\">{}</div>",
        esc(&cell.prompt)
    );
    if let Some(r) = reason {
        let _ = write!(out, "<div class=\"reason\">{}</div>", esc(&r));
    }
    if !cell.tags.is_empty() {
        out.push_str("<div class=\"tags\">");
        for (k, v) in &cell.tags {
            let _ = write!(out, "<span class=\"tag\">{}={}</span>", esc(k), esc(v));
        }
        out.push_str("</div>");
    }
    out.push_str("</figcaption></figure>\n");
}

/// The top-level index: every batch with its totals, linking to the pages that exist.
fn index_page(out: &mut String, statuses: &[BatchStatus], root: &Path) {
    html::page_head(out, "runner report");
    let _ = writeln!(
        out,
        "<header><h1>Batches</h1><p class=\"dim\">generated {} (local time, UTC{})</p></header>",
        local_minute(crate::api::now_ms()),
        local_offset()
    );
    if statuses.is_empty() {
        out.push_str("<p class=\"empty\">The store has no batches.</p>\n");
    } else {
        out.push_str(
            "<table class=\"batches\"><tr><th>batch</th><th>items</th><th>done</th><th>failed</th><th>not done</th>\
             <th>images archived</th><th>pass</th><th>review</th><th>block</th></tr>\n",
        );
        for s in statuses {
            let item = |k: &str| s.items.get(k).copied().unwrap_or(0);
            let total: i64 = s.items.values().sum();
            let name = if root.join(&s.batch).join("index.html").exists() {
                format!(
                    "<a href=\"{}/index.html\">{}</a>",
                    url_path(&s.batch),
                    esc(&s.batch)
                )
            } else {
                esc(&s.batch).to_string()
            };
            let _ = writeln!(
                out,
                "<tr><td>{name}</td><td class=\"n\">{total}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                item("done"),
                item("failed"),
                total - item("done") - item("failed"),
                s.images.get("archived").copied().unwrap_or(0),
                s.verdicts.get("pass").copied().unwrap_or(0),
                s.verdicts.get("review").copied().unwrap_or(0),
                s.verdicts.get("block").copied().unwrap_or(0),
            );
        }
        out.push_str("</table>\n");
    }
    html::page_tail(out, false);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{Verdict, Version};
    use crate::report::{CellImage, Column, Failure, Pivot};

    fn col(w: u32, h: u32) -> Column {
        Column {
            size: Size::new(w, h),
            version: Version::V2,
            image_num: 1,
            variant: 0,
        }
    }

    fn cell(group: u32, row: u32, column: u32, prompt: &str, image: Option<CellImage>) -> Cell {
        Cell {
            group,
            row,
            column,
            key: format!("{:032x}", group * 100 + row * 10 + column),
            prompt: prompt.into(),
            size: Size::new(512, 512),
            version: Version::V2,
            image_num: 1,
            variant: 0,
            tags: BTreeMap::from([("sku".to_string(), "<b>A&1</b>".to_string())]),
            vars: BTreeMap::from([
                ("animal".to_string(), prompt.to_string()),
                ("place".to_string(), "海边".to_string()),
            ]),
            state: ItemState::Done,
            failure: None,
            image,
        }
    }

    fn archived(verdict: Verdict) -> Option<CellImage> {
        Some(CellImage {
            index: 0,
            state: ImageState::Archived,
            verdict,
            path: Some("images/00/k-0.png".into()),
            sha256: Some("ab".into()),
            error: None,
        })
    }

    #[test]
    fn a_template_grid_has_a_header_per_var_and_column_and_fills_gaps() {
        let groups = vec![Group {
            template: Some("{animal}在{place}<跑>".into()),
            columns: vec![col(512, 512), col(1024, 1024)],
            pivot: None,
            rows: 2,
            items: 3,
        }];
        let mut g = GridWriter::new(&groups, Some("../../archive/b/".into()));
        let ready = Thumb::Ready(Size::new(256, 256));
        g.cell(&cell(0, 0, 0, "猫", archived(Verdict::Pass)), &ready);
        g.cell(&cell(0, 0, 1, "猫", archived(Verdict::Review)), &ready);
        // Row 1 has only its second column.
        g.cell(&cell(0, 1, 1, "狗", archived(Verdict::Pass)), &ready);
        g.finish();
        let html = &g.out;
        assert!(
            html.contains("<h2>Template <code>{animal}在{place}&lt;跑&gt;</code></h2>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<th>animal</th><th>place</th><th>512x512 · v2</th><th>1024x1024 · v2</th>"
            ),
            "{html}"
        );
        assert_eq!(
            html.matches("<tr>").count(),
            3,
            "a header and two rows: {html}"
        );
        assert_eq!(
            html.matches("<td class=\"empty\">—</td>").count(),
            1,
            "{html}"
        );
        let row2 = &html[html.rfind("<tr>").unwrap()..];
        assert!(
            row2.find("class=\"empty\"").unwrap() < row2.find("v-pass").unwrap(),
            "{row2}"
        );
        assert_eq!(html.matches("<figure class=\"card v-pass\"").count(), 2);
        assert_eq!(html.matches("<figure class=\"card v-review\"").count(), 1);
        assert!(html.contains("<a href=\"../../archive/b/images/00/k-0.png\"><img src=\"thumbs/"));
        assert!(
            html.contains("<span class=\"tag\">sku=&lt;b&gt;A&amp;1&lt;/b&gt;</span>"),
            "{html}"
        );
        assert!(!html.contains("<b>"));
        assert!(html.ends_with("</tbody></table></section>\n"));
    }

    #[test]
    fn a_pivoted_template_has_the_last_var_across() {
        let groups = vec![Group {
            template: Some("{animal}在{place}".into()),
            columns: vec![col(512, 512)],
            pivot: Some(Pivot {
                var: "place".into(),
                values: vec!["草原".into(), "海边".into()],
            }),
            rows: 1,
            items: 1,
        }];
        let mut g = GridWriter::new(&groups, None);
        g.cell(
            &cell(0, 0, 1, "猫", archived(Verdict::Block)),
            &Thumb::Ready(Size::new(256, 256)),
        );
        g.finish();
        let html = &g.out;
        assert!(
            html.contains("<th>animal</th><th>place: 草原</th><th>place: 海边</th>"),
            "{html}"
        );
        assert!(!html.contains("<th>place</th>"), "{html}");
        assert!(
            html.contains("<tr><th title=\"猫\">猫</th><td class=\"empty\">—</td><td>"),
            "{html}"
        );
        assert!(!html.contains("<a href"), "no archive, no links");
    }

    #[test]
    fn single_column_groups_flow_and_placeholders_say_why() {
        let groups = vec![
            Group {
                template: None,
                columns: vec![col(512, 512)],
                pivot: None,
                rows: 4,
                items: 4,
            },
            Group {
                template: None,
                columns: vec![col(512, 512), col(640, 360)],
                pivot: None,
                rows: 1,
                items: 2,
            },
        ];
        let mut g = GridWriter::new(&groups, None);
        let mut failed = cell(0, 0, 0, "失败", None);
        failed.state = ItemState::Failed;
        failed.failure = Some(Failure {
            class: "permanent".into(),
            code: Some(501),
            message: "prompt blocked <by> censorship".into(),
        });
        g.cell(&failed, &Thumb::None);
        let mut skipped = cell(0, 1, 0, "拦截", archived(Verdict::Block));
        if let Some(i) = skipped.image.as_mut() {
            i.state = ImageState::Skipped;
            i.path = None;
        }
        g.cell(&skipped, &Thumb::None);
        let mut pending = cell(0, 2, 0, "等待", None);
        pending.state = ItemState::Pending;
        g.cell(&pending, &Thumb::None);
        g.cell(
            &cell(0, 3, 0, "丢了", archived(Verdict::Pass)),
            &Thumb::Failed("b/images/00/k-0.png is missing from the archive".into()),
        );
        g.cell(
            &cell(1, 0, 1, "宽", archived(Verdict::Pass)),
            &Thumb::Ready(Size::new(256, 144)),
        );
        g.finish();
        let html = &g.out;
        let flow = &html[..html.find("</section>").unwrap()];
        assert!(
            flow.contains("<div class=\"flow\">") && !flow.contains("<table"),
            "{flow}"
        );
        assert!(html.contains("class=\"card v-failed\""));
        assert!(
            html.contains("failed (permanent 501): prompt blocked &lt;by&gt; censorship"),
            "{html}"
        );
        assert!(html.contains("class=\"card v-block\""));
        assert!(html.contains("aria-label=\"blocked\""));
        assert!(html.contains("archive policy skips block images"));
        assert!(html.contains("class=\"card v-waiting\""));
        assert!(html.contains("<span class=\"badge b-waiting\">pending</span>"));
        assert!(html.contains("is missing from the archive; `runner verify` fetches it again"));
        assert_eq!(
            html.matches("<img ").count(),
            1,
            "placeholders are inline SVG"
        );
        assert!(html.contains("<svg class=\"ph\""));
        // The second group is a table whose first column is empty.
        let table = &html[html.find("<table").unwrap()..];
        assert!(table.contains("<th>prompt</th>"));
        assert!(
            table.contains("<tr><th>宽</th><td class=\"empty\">—</td><td>"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_batch_says_so() {
        let mut g = GridWriter::new(&[], None);
        g.finish();
        assert!(g.out.contains("no items"));
    }

    #[test]
    fn vars_follow_the_template_and_links_are_relative() {
        let names = ["place".to_string(), "animal".to_string(), "zz".to_string()];
        assert_eq!(
            var_order("{animal}在{place}", names.iter()),
            vec!["animal", "place", "zz"]
        );
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("report/b");
        let images = dir.path().join("my archive/b");
        fs::create_dir_all(&page).unwrap();
        fs::create_dir_all(&images).unwrap();
        assert_eq!(
            relative_dir(&page, &images).as_deref(),
            Some("../../my%20archive/b/")
        );
        assert_eq!(relative_dir(&page, &page).as_deref(), Some(""));
        assert_eq!(relative_dir(&page, &dir.path().join("none")), None);
    }
}
