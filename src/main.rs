use std::path::PathBuf;

use braid::config::Settings;
use braid::http::Limits;
use braid::startup::Application;
use clap::{Parser, Subcommand};

/// Braid: a FHIR R4 interoperability gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML settings file (see the README for every setting).
    #[arg(long, env = "BRAID_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the FHIR API.
    Serve(ServeArgs),
    /// Serve with demo data (official R4 examples and Synthea patients) loaded into an empty database.
    Demo(ServeArgs),
    /// Reclaim disk space in a stopped database: drop superseded index entries, shrink the file.
    Compact(CompactArgs),
}

#[derive(clap::Args)]
struct CompactArgs {
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [env: BRAID_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb; ./data/demo.redb for demo]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref(), |name| std::env::var(name).ok())?;
    let (args, demo) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::Demo(args) => (args, true),
        Command::Compact(args) => return compact(settings, args),
    };
    if demo {
        // The demo is for a person at a terminal: its own database and readable logs, unless
        // the operator chose otherwise.
        if settings.data == Settings::default().data {
            settings.data = PathBuf::from("./data/demo.redb");
        }
        if std::env::var_os("BRAID_LOG_FORMAT").is_none() && cli.config.is_none() {
            settings.log_format = braid::config::LogFormat::Pretty;
        }
    }
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(data) = args.data {
        settings.data = data;
    }
    braid::telemetry::init(&settings);

    let application = Application::build(&settings)?;
    let base = settings
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/fhir", display_address(&settings.listen, application.port())));
    tracing::info!(port = application.port(), data = %settings.data.display(), "braid is listening");
    if demo {
        let limits = Limits::from_settings(&settings);
        match braid::demo::load_if_empty(application.store(), &limits, &base).await? {
            Some(loaded) => println!(
                "Loaded {} official R4 examples ({} rejected) and {} Synthea patient bundles ({} resources).",
                loaded.examples,
                loaded.examples_rejected.len(),
                loaded.synthea_bundles,
                loaded.synthea_resources
            ),
            None => println!("The database at {} already holds data; nothing was loaded.", settings.data.display()),
        }
        println!(
            "\nBraid is serving FHIR R4 at {base}\n\nTry:\n  curl {base}/metadata\n  curl {base}/Patient/example\n  curl {base}/Observation/heart-rate/_history\n  curl '{base}/Patient/_history?_count=5'\n  curl {base}/_history\n\nStop with Ctrl-C.\n"
        );
    }
    application.run_until_stopped().await?;
    Ok(())
}

fn compact(mut settings: Settings, args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(data) = args.data {
        settings.data = data;
    }
    let path = settings.data;
    let ttl = std::time::Duration::from_secs(settings.cursor_ttl_secs);
    let report = braid::store::compact(&path, ttl, &braid::search::SearchIndexer)
        .map_err(|error| format!("cannot compact {}: {error}", path.display()))?;
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    println!(
        "Compacted {}: {:.1} MiB -> {:.1} MiB; removed the index entries of {} superseded versions ({} entries); rewrote {} rows in key order.",
        path.display(),
        mib(report.bytes_before),
        mib(report.bytes_after),
        report.collected.versions,
        report.collected.entries,
        report.rows_repacked
    );
    Ok(())
}

/// The address clients can use: a wildcard listen address is shown as localhost.
fn display_address(listen: &str, port: u16) -> String {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = if host == "0.0.0.0" || host == "[::]" { "127.0.0.1" } else { host };
    format!("{host}:{port}")
}
