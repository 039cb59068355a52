//! `runner export`: one row per image, for spreadsheets and data pipelines.

use std::io::Write;
use std::path::PathBuf;

use super::run::StoreArgs;
use super::{Exit, ExitError};
use crate::archive::atomic;
use crate::report::export::{self, Format};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line (RFC 4180: quoted fields, CRLF line ends).
    Csv,
}

/// Write one row per image (archived, skipped or lost) with its batch, item, prompt, size,
/// version, variant, verdict, state, path (relative to the archive root), hash, tags, vars and
/// timestamps. Opens the store read-only.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Only this batch.
    #[arg(long)]
    pub batch: Option<String>,
    /// Output file (written atomically), or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Start a CSV with a UTF-8 byte-order mark, so Excel reads the Chinese text correctly.
    #[arg(long)]
    pub bom: bool,
}

/// Runs `runner export`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let store = crate::store::open_read_only(&args.store.db)
        .await
        .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
    if let Some(b) = &args.batch
        && !store.batches().await?.contains(b)
    {
        return Err(ExitError::new(
            Exit::Invalid,
            format!("no batch named {b:?} in {}", args.store.db.display()),
        )
        .into());
    }
    let format = match args.format {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    let batch = args.batch.as_deref();
    let written = if args.out.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        export::write(store.as_ref(), batch, format, args.bom, &mut out).await
    } else {
        let dest = args.out.clone();
        let tmp = atomic::temp_for(&dest, None, atomic::Mode::Public)
            .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
        let mut out = std::io::BufWriter::new(tmp);
        match export::write(store.as_ref(), batch, format, args.bom, &mut out).await {
            Ok(n) => {
                out.flush()?;
                let tmp = out
                    .into_inner()
                    .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
                atomic::commit(tmp, &dest, true)
                    .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
                Ok(n)
            }
            Err(e) => Err(e),
        }
    };
    store.close().await;
    match written {
        Ok(n) => {
            eprintln!("exported {n} image row(s)");
            Ok(Exit::Done)
        }
        // The reader stopped early (`| head`): what it read is fine.
        Err(e) if e.is_broken_pipe() => Ok(Exit::Done),
        Err(e) => Err(ExitError::new(Exit::Runtime, e.to_string()).into()),
    }
}
