use std::path::PathBuf;

use std::sync::Arc;

use braid::config::Settings;
use braid::crypt::KeyFile;
use braid::http::Limits;
use braid::startup::Application;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the writer thread allocates and frees many small
/// buffers per resource (keys, index values, pages), and glibc's malloc spent a third of the
/// writer's time consolidating and unlinking free chunks under write load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Braid: a FHIR R4 interoperability gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML settings file (see the README for every setting).
    #[arg(long, env = "BRAID_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Key file of an encrypted database, made by `braid keygen` (every command that opens the
    /// database takes it) [env: BRAID_ENCRYPTION_KEY_FILE]
    #[arg(long, global = true)]
    encryption_key_file: Option<PathBuf>,
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
    /// Bring a stopped database to this release's storage format (what `serve` does at start),
    /// printing progress; a JSON summary goes to stdout. An interrupted run resumes.
    Migrate(CompactArgs),
    /// Write a new random encryption key to FILE (readable by its owner only; never overwrites).
    Keygen(KeygenArgs),
    /// Encrypt a stopped plain database with the data key of a new key block under
    /// --encryption-key-file, printing progress; a JSON summary goes to stdout. An interrupted
    /// run resumes.
    Encrypt(CompactArgs),
    /// Decrypt a stopped encrypted database (--encryption-key-file opens it) into a plain one;
    /// like `encrypt`, resumable.
    Decrypt(CompactArgs),
    /// Change the key file of a stopped encrypted database from --encryption-key-file to
    /// --new-key-file, without rewriting the data; the old key no longer opens it.
    Rekey(RekeyArgs),
    /// Compression dictionaries for stored resource bodies.
    #[command(subcommand)]
    Dictionary(DictionaryCommand),
    /// The client applications that may ask for access tokens (SMART).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Braid's token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The people who log in to authorize apps (SMART): patients, practitioners, administrators.
    #[command(subcommand)]
    User(UserCommand),
    /// Start an EHR launch: prints a `launch` value the app passes to /auth/authorize, with the
    /// patient in context (valid for an hour).
    Launch(LaunchArgs),
    /// The upstream systems (EHRs) whose records Braid holds, each in its own namespace.
    #[command(subcommand)]
    Source(SourceCommand),
    /// The master patient index, which links the Patients of every source into one golden
    /// Patient per person.
    #[command(subcommand)]
    Mpi(MpiCommand),
    /// Write realistic multi-source test data with its ground truth: the same people registered
    /// at several providers (typos, nicknames, swapped dates, moves, changed surnames, twins and
    /// households), with Observations and Appointments, some reported twice, some overlapping.
    /// One NDJSON file per source and truth.csv go to --out; a JSON summary to stdout.
    Synth(SynthArgs),
    /// Turn a wearable export (Apple Health, Open mHealth) or a camera scan (rPPG video or
    /// trace) into vital-signs Observations of a patient, written into the database (or printed
    /// with --dry-run). A summary of what was created, left unchanged, skipped and refused
    /// (with the reason) follows, as JSON on stdout.
    Ingest(IngestArgs),
}

#[derive(clap::Args)]
struct IngestArgs {
    /// The input's format.
    #[arg(value_parser = ["apple", "fitbit", "mhealth", "rppg"])]
    format: String,
    /// The file to read (for fitbit, also an unpacked export's folder).
    file: PathBuf,
    /// The id of the Patient the measurements belong to.
    #[arg(long)]
    patient: String,
    /// Print the Observations as NDJSON on stdout (and nothing else there); write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write to this running FHIR server (its base URL, e.g. http://127.0.0.1:8080/fhir), one
    /// transaction per batch, instead of into a database file.
    #[arg(long, conflicts_with = "dry_run")]
    server: Option<String>,
    /// The bearer token for --server (a SMART token that may write the patient's Observations
    /// and Devices).
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// The time zone (IANA name, e.g. Europe/Berlin) of times written without an offset
    /// (Fitbit's); default: the export's Profile.csv, else UTC.
    #[arg(long)]
    timezone: Option<String>,
    /// The database file (default: the configured one).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// How many people.
    #[arg(long, default_value_t = 1_000)]
    people: usize,
    /// How many sources (providers), 2 to 8.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=8))]
    sources: u8,
    /// The same seed makes the same data.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Patients only (no Observations or Appointments).
    #[arg(long)]
    patients_only: bool,
    /// The directory the files are written to (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum MpiCommand {
    /// Learn the matcher's parameters from the Patients in the database, store them, and
    /// re-score every automatic link with them (manual links stay). Prints the training report
    /// as JSON.
    Train(MpiTrainArgs),
    /// Print the parameters in use, the training report, how far matching is behind, and the
    /// index's figures, as JSON.
    Show(CompactArgs),
}

#[derive(clap::Args)]
struct MpiTrainArgs {
    /// Random pairs that estimate u (default 1000000).
    #[arg(long)]
    u_pairs: Option<usize>,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SourceCommand {
    /// Add a push source: an upstream that writes as a backend client (private_key_jwt with
    /// the given keys). Prints JSON with the source's name and its client_id.
    Add(Box<SourceAddArgs>),
    /// Print every source as JSON lines.
    List(CompactArgs),
    /// Print a source's state and figures.
    Show(SourceShowArgs),
    /// Remove a source and its client (the records it wrote stay).
    Remove(SourceNameArgs),
    /// Run one pull of a pull source now; prints the run as JSON.
    Sync(SourceNameArgs),
}

#[derive(clap::Args)]
struct SourceAddArgs {
    /// 1 to 16 lowercase letters and digits; its records' ids start with it.
    name: String,
    /// A push source's public keys (a JWKS JSON file) for private_key_jwt (RS384 or ES384).
    #[arg(long, required_unless_present_any = ["jwks_url", "pull"], conflicts_with_all = ["jwks_url", "pull"])]
    jwks: Option<PathBuf>,
    /// Where Braid fetches a push source's public keys.
    #[arg(long, conflicts_with = "pull")]
    jwks_url: Option<String>,
    /// A pull source: the upstream's FHIR base URL, which Braid reads as a backend service.
    #[arg(long, requires_all = ["client_id", "key"])]
    pull: Option<String>,
    /// Braid's client id at the upstream (pull sources).
    #[arg(long, requires = "pull")]
    client_id: Option<String>,
    /// The private key (PEM, RSA for RS384 or P-384 EC for ES384) Braid signs its assertions to
    /// the upstream with; the public key to register there is printed.
    #[arg(long, requires = "pull")]
    key: Option<PathBuf>,
    /// The key's id at the upstream (default: its RFC 7638 thumbprint).
    #[arg(long, requires = "pull")]
    key_id: Option<String>,
    /// How often to pull, e.g. 15m, 1h, 1d (default: only when `braid source sync` asks).
    #[arg(long, requires = "pull")]
    every: Option<String>,
    /// The resource types the source may write, comma-separated (default: every type).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Store resources that break only value rules, with their issues recorded (default:
    /// strict, they are refused).
    #[arg(long)]
    lenient: bool,
    /// Scopes granted beyond writing and reading its own records, e.g. "system/Patient.rs".
    #[arg(long)]
    scope: Option<String>,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SourceShowArgs {
    name: String,
    /// Print JSON (the default is a summary for people).
    #[arg(long)]
    json: bool,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SourceNameArgs {
    name: String,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LaunchArgs {
    /// The app's client id.
    #[arg(long)]
    client: String,
    /// The id of the Patient in context.
    #[arg(long)]
    patient: String,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from the first line of standard input.
    Add(UserAddArgs),
    /// Print every user as JSON lines.
    List(CompactArgs),
    /// Remove a user.
    Remove(UserNameArgs),
    /// Forget a user's second factor: they enrol again at their next login.
    ResetTotp(UserNameArgs),
}

#[derive(clap::Args)]
struct UserAddArgs {
    #[arg(long)]
    username: String,
    /// Read the password from the first line of standard input (required: passwords never go
    /// on the command line, where other users of the machine can see them).
    #[arg(long, required = true)]
    password_stdin: bool,
    /// The id of the Patient record that is this user's (required for patients).
    #[arg(long)]
    patient: Option<String>,
    #[arg(long, default_value = "patient", value_parser = ["patient", "practitioner", "admin"])]
    role: String,
    /// The resource that represents the user, e.g. Practitioner/123 (a patient's is their Patient).
    #[arg(long)]
    fhir_user: Option<String>,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct UserNameArgs {
    username: String,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client; prints it as JSON (with its secret, the only time it is shown, if
    /// --secret is given).
    Add(ClientAddArgs),
    /// Print every client as JSON lines.
    List(CompactArgs),
    /// Remove a client: it gets no more tokens.
    Remove(ClientRemoveArgs),
    /// Issue an initial access token, with which an app may register itself (RFC 7591) with
    /// more than patient-facing access. Printed as JSON.
    RegistrationToken(RegistrationTokenArgs),
}

#[derive(clap::Args)]
struct RegistrationTokenArgs {
    /// How many registrations it allows.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// How many hours it stays valid.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ClientAddArgs {
    /// A name for the operator's records.
    #[arg(long)]
    name: String,
    /// The most the client may be granted, e.g. "system/Patient.rs system/Observation.rs".
    #[arg(long)]
    scope: String,
    /// client_credentials (backend services) or authorization_code (apps); repeatable. Default:
    /// client_credentials when every scope is a system/ scope.
    #[arg(long = "grant", value_parser = ["client_credentials", "authorization_code"])]
    grants: Vec<String>,
    /// Where authorization codes may be sent (authorization_code clients); repeatable.
    #[arg(long = "redirect-uri")]
    redirect_uris: Vec<String>,
    /// The client's public keys (a JWKS JSON file) for private_key_jwt (RS384 or ES384).
    #[arg(long, conflicts_with_all = ["jwks_url", "secret"])]
    jwks: Option<PathBuf>,
    /// Where Braid fetches the client's public keys for private_key_jwt.
    #[arg(long, conflicts_with_all = ["jwks", "secret"])]
    jwks_url: Option<String>,
    /// Generate a client secret (client_secret_basic), printed once.
    #[arg(long, conflicts_with_all = ["jwks", "jwks_url"])]
    secret: bool,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ClientRemoveArgs {
    /// The client's id.
    client_id: String,
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new key the one tokens are signed with; tokens signed with the old one keep
    /// working until they expire. Prints the new key's id as JSON.
    Rotate(CompactArgs),
}

#[derive(Subcommand)]
enum DictionaryCommand {
    /// Train a dictionary on a stopped database's own bodies; it becomes the one new writes use
    /// if it compresses a held-out sample better. Prints a JSON report.
    Train(TrainArgs),
    /// Compress the bodies of a stopped database that do not use its current dictionary (after
    /// `train`) with it. Resumable; progress on stderr, a JSON summary on stdout.
    Recompress(CompactArgs),
    /// Train the built-in dictionary from FHIR JSON files (transaction and batch Bundles stand
    /// for their entries) and write it to a file.
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dictionary size in bytes.
    #[arg(long, default_value_t = braid::store::codec::DEFAULT_DICTIONARY_BYTES)]
    size: usize,
    /// Bodies to train on (as many again are held out to judge the result); at most 20000.
    #[arg(long, default_value_t = 5000)]
    samples: usize,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Where to write the dictionary.
    #[arg(long)]
    out: PathBuf,
    /// Dictionary size in bytes.
    #[arg(long, default_value_t = braid::store::codec::DEFAULT_DICTIONARY_BYTES)]
    size: usize,
    /// Directories of FHIR JSON files.
    #[arg(required = true)]
    directories: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Where to write the key.
    file: PathBuf,
}

#[derive(clap::Args)]
struct RekeyArgs {
    /// Database file [env: BRAID_DATA] [default: ./data/braid.redb]
    #[arg(long)]
    data: Option<PathBuf>,
    /// The key file that opens the database from now on.
    #[arg(long)]
    new_key_file: PathBuf,
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
    /// Serve HTTPS with this PEM certificate chain (with --tls-key) [env: BRAID_TLS_CERT]
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [env: BRAID_TLS_KEY]
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// on: require SMART access tokens; off: allow every request [env: BRAID_AUTH] [default: on]
    #[arg(long)]
    auth: Option<braid::config::AuthMode>,
}

/// Runs the command; an error is printed as a sentence (not as a debug dump) with a failing
/// exit status.
#[actix_web::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref(), |name| std::env::var(name).ok())?;
    if let Some(key_file) = cli.encryption_key_file {
        settings.encryption_key_file = Some(key_file);
    }
    let (args, demo) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::Demo(args) => (args, true),
        Command::Compact(args) => return compact(settings, args),
        Command::Keygen(args) => {
            KeyFile::generate(&args.file)?;
            println!("{}", serde_json::json!({"key_file": args.file}));
            return Ok(());
        }
        Command::Encrypt(args) => return convert(settings, args, braid::store::encryption::Direction::Encrypt),
        Command::Decrypt(args) => return convert(settings, args, braid::store::encryption::Direction::Decrypt),
        Command::Rekey(args) => return rekey(settings, args),
        Command::Migrate(args) => return migrate(settings, args),
        Command::Dictionary(DictionaryCommand::Train(args)) => return train_dictionary(settings, args),
        Command::Dictionary(DictionaryCommand::Build(args)) => return build_dictionary(args),
        Command::Dictionary(DictionaryCommand::Recompress(args)) => return recompress(settings, args),
        Command::Client(command) => return client(settings, command).await,
        Command::Keys(KeysCommand::Rotate(args)) => return rotate_keys(settings, args).await,
        Command::User(command) => return user(settings, command).await,
        Command::Source(command) => return source(settings, command).await,
        Command::Synth(args) => {
            println!("{}", serde_json::to_string_pretty(&synth(args)?)?);
            return Ok(());
        }
        Command::Ingest(args) => return ingest(settings, args).await,
        Command::Mpi(command) => {
            use braid::auth::admin::AdminRequest;
            let (data, request) = match command {
                MpiCommand::Train(args) => (args.data, AdminRequest::TrainMpi { u_pairs: args.u_pairs }),
                MpiCommand::Show(args) => (args.data, AdminRequest::ShowMpi),
            };
            let answer = admin_command(data, &settings, request).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(());
        }
        Command::Launch(args) => {
            let request =
                braid::auth::admin::AdminRequest::CreateLaunch { client_id: args.client, patient: args.patient };
            println!("{}", admin_command(args.data, &settings, request).await?);
            return Ok(());
        }
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
    if let Some(cert) = args.tls_cert {
        settings.tls_cert = Some(cert);
    }
    if let Some(key) = args.tls_key {
        settings.tls_key = Some(key);
    }
    if let Some(auth) = args.auth {
        settings.auth = auth;
    }
    braid::telemetry::init(&settings);

    let application = Application::build(&settings).await?;
    let base = settings.base_url.clone().unwrap_or_else(|| {
        let scheme = if application.serves_https() { "https" } else { "http" };
        format!("{scheme}://{}/fhir", display_address(&settings.listen, application.port()))
    });
    tracing::info!(port = application.port(), data = %settings.data.display(), "braid is listening");
    if demo {
        let limits = Limits::from_settings(&settings);
        let loaded = braid::demo::load_if_empty(application.store(), &limits, &base).await?;
        let loaded_now = loaded.is_some();
        match loaded {
            Some(loaded) => println!(
                "Loaded {} official R4 examples ({} rejected) and {} Synthea patient bundles ({} resources).",
                loaded.examples,
                loaded.examples_rejected.len(),
                loaded.synthea_bundles,
                loaded.synthea_resources
            ),
            None => println!("The database at {} already holds data; nothing was loaded.", settings.data.display()),
        }
        let mut demo_patient = "example".to_owned();
        if loaded_now {
            let keys = braid::store::beside(&settings.data, "demo-keys");
            let braided = braid::demo::load_braid(
                application.store(),
                application.sources(),
                application.mpi(),
                &limits,
                &base,
                &keys,
            )
            .await?;
            let origin = base.trim_end_matches("/fhir");
            let sources: Vec<String> =
                braided.sources.iter().map(|(name, count)| format!("{name} ({count})")).collect();
            println!(
                "\nFour simulated EHRs pushed their records as sources: {}. The master patient index linked {} \
                 Patients into {} golden Patients (GET {origin}/mpi shows it; each EHR's key to push more is in {}).\n\n\
                 One person, registered at {} EHRs ({}), as one record:\n  \
                 {base}/Patient/{golden}\n  {base}/Patient/{golden}/$everything\n  \
                 {base}/Observation?patient={golden}   (a reading two EHRs reported is shown once, naming both)\n  \
                 {base}/Appointment?patient={golden}   (overlapping appointments at different EHRs are flagged)\n  \
                 {base}/$mdm-query-links?goldenResourceId={golden}",
                sources.join(", "),
                braided.patients,
                braided.golden_patients,
                braided.keys.display(),
                braided.members.len(),
                braided.members.join(", "),
                golden = braided.golden,
            );
            if !braided.golden.is_empty() {
                demo_patient = braided.golden.clone();
            }
        }
        if settings.auth == braid::config::AuthMode::Off {
            println!(
                "\nBraid is serving FHIR R4 at {base} (auth off)\n\nTry:\n  curl {base}/metadata\n  curl {base}/Patient/example\n  curl {base}/Observation/heart-rate/_history\n  curl '{base}/Patient/_history?_count=5'\n  curl {base}/_history\n\nStop with Ctrl-C.\n"
            );
        } else {
            let origin = base.trim_end_matches("/fhir");
            let redirect = format!("{origin}/demo-app/callback");
            match braid::demo::create_accounts(application.store(), &redirect, &demo_patient).await? {
                Some(accounts) => println!(
                    "\nBraid is serving FHIR R4 at {base}; every request needs an access token.\n\n\
                     A backend service (shown once; `braid client list` lists clients):\n  \
                     TOKEN=$(curl -s -u {backend}:{secret} -d grant_type=client_credentials -d 'scope=system/*.rs' {origin}/auth/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n  \
                     curl -H \"Authorization: Bearer $TOKEN\" {base}/Patient/example\n\n\
                     The patient portal: open {origin}/portal/ and sign in as user {user}, password {password} \
                     (a TOTP authenticator app is enrolled at the first login). The login is bound to \
                     Patient/{patient}, a person the simulated EHRs all registered, so the portal shows one \
                     record from every provider.\n\n\
                     The same login works for other apps. A public demo app, client_id {app}, may \
                     launch with redirect_uri {redirect}: open\n  {origin}/auth/authorize?response_type=code&client_id={app}&redirect_uri={redirect}&scope=launch/patient%20openid%20fhirUser%20patient/*.rs&state=demo&aud={base}&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256\n\
                     then exchange the code from the final address at {origin}/auth/token with \
                     code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk.\n\nStop with Ctrl-C.\n",
                    backend = accounts.backend_client_id,
                    secret = accounts.backend_secret,
                    user = accounts.username,
                    password = accounts.password,
                    patient = accounts.patient,
                    app = accounts.app_client_id,
                ),
                None => println!(
                    "\nBraid is serving FHIR R4 at {base}; every request needs an access token. The demo accounts \
                     were created at the first start (`braid client list`, `braid user list`). The patient portal \
                     is at {origin}/portal/ (user {DEMO_USER}; its password was printed at the first start).\n\n\
                     Stop with Ctrl-C.\n",
                    DEMO_USER = braid::demo::DEMO_USER,
                ),
            }
        }
    }
    application.run_until_stopped().await?;
    Ok(())
}

/// `braid synth`: writes each source's resources as NDJSON and the truth as CSV.
fn synth(args: SynthArgs) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use std::io::Write;
    if args.people == 0 || args.people > braid::mpi::synth::MAX_PEOPLE {
        return Err(format!("--people must be 1 to {}", braid::mpi::synth::MAX_PEOPLE).into());
    }
    let options = braid::mpi::synth::SynthOptions {
        people: args.people,
        sources: usize::from(args.sources),
        seed: args.seed,
        clinical: !args.patients_only,
    };
    let synthetic = braid::mpi::synth::generate(options);
    std::fs::create_dir_all(&args.out).map_err(|error| format!("{}: {error}", args.out.display()))?;
    let mut files = Vec::new();
    for source in &synthetic.sources {
        let path = args.out.join(format!("{}.ndjson", source.name));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for resource in &source.resources {
            serde_json::to_writer(&mut file, resource)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
        files.push(serde_json::json!({"source": source.name, "file": path, "resources": source.resources.len()}));
    }
    let truth_path = args.out.join("truth.csv");
    let mut truth = std::io::BufWriter::new(std::fs::File::create(&truth_path)?);
    writeln!(truth, "source,patient,person")?;
    for registration in &synthetic.truth {
        writeln!(truth, "{},{},{}", registration.source, registration.patient, registration.person)?;
    }
    truth.flush()?;
    Ok(serde_json::json!({"sources": files, "truth": truth_path, "figures": synthetic.figures}))
}

fn compact(settings: Settings, args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = database_key(&settings)?;
    let path = args.data.unwrap_or(settings.data);
    let ttl = std::time::Duration::from_secs(settings.cursor_ttl_secs);
    let report = braid::store::compact(&path, key.as_deref(), ttl, &braid::search::SearchIndexer)
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

/// The key file the settings name, loaded (`None`: a plain database).
fn database_key(settings: &Settings) -> Result<Option<Arc<KeyFile>>, Box<dyn std::error::Error>> {
    Ok(KeyFile::load_setting(settings.encryption_key_file.as_deref())?)
}

fn required_key(settings: &Settings, command: &str) -> Result<Arc<KeyFile>, Box<dyn std::error::Error>> {
    database_key(settings)?.ok_or_else(|| {
        format!("braid {command} needs the key file: --encryption-key-file FILE (or BRAID_ENCRYPTION_KEY_FILE)").into()
    })
}

/// `braid encrypt` and `braid decrypt`.
fn convert(
    settings: Settings,
    args: CompactArgs,
    direction: braid::store::encryption::Direction,
) -> Result<(), Box<dyn std::error::Error>> {
    use braid::store::encryption::Direction;
    let command = if direction == Direction::Encrypt { "encrypt" } else { "decrypt" };
    let key = required_key(&settings, command)?;
    let path = args.data.unwrap_or(settings.data);
    let mut bar: Option<indicatif::ProgressBar> = None;
    let report = braid::store::encryption::convert(&path, &key, direction, &mut |progress| {
        bar.get_or_insert_with(|| progress_bar(progress.total)).set_position(progress.done);
    })
    .map_err(|error| format!("cannot {command} {}: {error}", path.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `braid rekey`.
fn rekey(settings: Settings, args: RekeyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let old = required_key(&settings, "rekey")?;
    let new = KeyFile::load(&args.new_key_file)?;
    let path = args.data.unwrap_or(settings.data);
    braid::store::encryption::rekey(&path, &old, &new)
        .map_err(|error| format!("cannot rekey {}: {error}", path.display()))?;
    println!("{}", serde_json::json!({"data": path, "rekeyed": true}));
    Ok(())
}

fn migrate(settings: Settings, args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = database_key(&settings)?;
    let path = args.data.unwrap_or(settings.data);
    let report = braid::store::migrate(&path, key.as_deref(), &braid::search::SearchIndexer, &mut |progress| {
        eprintln!("migrated {} of {} {}", progress.migrated, progress.total, progress.unit);
    })
    .map_err(|error| format!("cannot migrate {}: {error}", path.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn train_dictionary(settings: Settings, args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = database_key(&settings)?;
    let path = args.data.unwrap_or(settings.data);
    let report =
        braid::store::dictionary::train(&path, key.as_deref(), &braid::search::SearchIndexer, args.size, args.samples)
            .map_err(|error| format!("cannot train a dictionary for {}: {error}", path.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn recompress(settings: Settings, args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = database_key(&settings)?;
    let path = args.data.unwrap_or(settings.data);
    let report =
        braid::store::dictionary::recompress(&path, key.as_deref(), &braid::search::SearchIndexer, &mut |progress| {
            eprintln!("recompressed {} of {} versions", progress.migrated, progress.total);
        })
        .map_err(|error| format!("cannot recompress {}: {error}", path.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn client(settings: Settings, command: ClientCommand) -> Result<(), Box<dyn std::error::Error>> {
    use braid::auth::admin::AdminRequest;
    use braid::auth::clients::{GrantType, NewClient, NewCredential};
    let (data, request) = match command {
        ClientCommand::Add(args) => {
            let credential = if let Some(path) = &args.jwks {
                NewCredential::Jwks(
                    std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?,
                )
            } else if let Some(url) = args.jwks_url {
                NewCredential::JwksUrl(url)
            } else if args.secret {
                NewCredential::Secret
            } else {
                NewCredential::None
            };
            let client = NewClient {
                name: args.name,
                scope: args.scope,
                grant_types: args.grants.iter().filter_map(|g| GrantType::parse(g)).collect(),
                redirect_uris: args.redirect_uris,
                credential,
                source: None,
            };
            (args.data, AdminRequest::AddClient { client })
        }
        ClientCommand::List(args) => (args.data, AdminRequest::ListClients),
        ClientCommand::Remove(args) => (args.data, AdminRequest::RemoveClient { client_id: args.client_id }),
        ClientCommand::RegistrationToken(args) => {
            (args.data, AdminRequest::RegistrationToken { uses: args.uses, hours: args.hours })
        }
    };
    let lines = matches!(request, AdminRequest::ListClients);
    let answer = admin_command(data, &settings, request).await?;
    match answer {
        serde_json::Value::Array(clients) if lines => clients.iter().for_each(|client| println!("{client}")),
        answer => println!("{answer}"),
    }
    Ok(())
}

async fn user(settings: Settings, command: UserCommand) -> Result<(), Box<dyn std::error::Error>> {
    use braid::auth::admin::AdminRequest;
    use braid::auth::users::{NewUser, Role};
    let (data, request) = match command {
        UserCommand::Add(args) => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            let role = Role::parse(&args.role).ok_or("unknown role")?;
            let user =
                NewUser { username: args.username, password, role, patient: args.patient, fhir_user: args.fhir_user };
            (args.data, AdminRequest::AddUser { user })
        }
        UserCommand::List(args) => (args.data, AdminRequest::ListUsers),
        UserCommand::Remove(args) => (args.data, AdminRequest::RemoveUser { username: args.username }),
        UserCommand::ResetTotp(args) => (args.data, AdminRequest::ResetTotp { username: args.username }),
    };
    let lines = matches!(request, AdminRequest::ListUsers);
    match admin_command(data, &settings, request).await? {
        serde_json::Value::Array(users) if lines => users.iter().for_each(|user| println!("{user}")),
        answer => println!("{answer}"),
    }
    Ok(())
}

async fn source(settings: Settings, command: SourceCommand) -> Result<(), Box<dyn std::error::Error>> {
    use braid::auth::admin::AdminRequest;
    use braid::auth::clients::NewCredential;
    let mut human = false;
    let (data, request) = match command {
        SourceCommand::Add(args) => {
            let args = *args;
            let read =
                |path: &PathBuf| std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()));
            let (credential, pull) = match (&args.jwks, args.jwks_url, args.pull) {
                (Some(path), _, _) => (NewCredential::Jwks(read(path)?), None),
                (None, Some(url), _) => (NewCredential::JwksUrl(url), None),
                (None, None, Some(base)) => {
                    let key = args.key.as_ref().ok_or("--pull needs --key")?;
                    let pull = braid::sources::NewPull {
                        base,
                        client_id: args.client_id.clone().ok_or("--pull needs --client-id")?,
                        key_pem: read(key)?,
                        kid: args.key_id,
                        every: args.every,
                    };
                    (NewCredential::None, Some(pull))
                }
                (None, None, None) => return Err("give --jwks FILE, --jwks-url URL or --pull BASE_URL".into()),
            };
            let source = braid::sources::NewSource {
                name: args.name,
                credential,
                pull,
                // An empty item (`--types ""`, `--types A,,B`) is refused by the registry, not
                // dropped: a list that came out empty would grant every type.
                types: args.types.into_iter().map(|t| t.trim().to_owned()).collect(),
                lenient: args.lenient,
                extra_scope: args.scope,
            };
            (args.data, AdminRequest::AddSource { source })
        }
        SourceCommand::List(args) => (args.data, AdminRequest::ListSources),
        SourceCommand::Show(args) => {
            human = !args.json;
            (args.data, AdminRequest::ShowSource { name: args.name })
        }
        SourceCommand::Remove(args) => (args.data, AdminRequest::RemoveSource { name: args.name }),
        SourceCommand::Sync(args) => (args.data, AdminRequest::SyncSource { name: args.name }),
    };
    let lines = matches!(request, AdminRequest::ListSources);
    let syncing = matches!(request, AdminRequest::SyncSource { .. });
    match admin_command(data, &settings, request).await? {
        serde_json::Value::Array(sources) if lines => sources.iter().for_each(|source| println!("{source}")),
        answer if human => print!("{}", braid::sources::summary(&answer)),
        answer => {
            println!("{answer}");
            // The run is printed whatever its outcome; a failed one also fails the command, so
            // that a script sees it without reading the JSON.
            if syncing && answer["run"]["outcome"] == "failed" {
                let error = answer["run"]["error"].as_str().unwrap_or("no reason recorded");
                return Err(format!("the pull failed: {error}").into());
            }
        }
    }
    Ok(())
}

async fn rotate_keys(settings: Settings, args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let answer = admin_command(args.data, &settings, braid::auth::admin::AdminRequest::RotateKeys).await?;
    println!("{answer}");
    Ok(())
}

/// `braid ingest`: reads the file on a blocking thread and writes (or prints) its resources
/// batch by batch, with progress on stderr.
async fn ingest(settings: Settings, args: IngestArgs) -> Result<(), Box<dyn std::error::Error>> {
    use braid::ingest::{self, Format, Summary};
    let format = Format::parse(&args.format).ok_or("unknown format")?;
    let remote = match &args.server {
        Some(base) => {
            let remote = ingest::remote::Remote::new(base, args.token.clone())?;
            remote.check_patient(&args.patient).await?;
            Some(remote)
        }
        None => None,
    };
    let store = if args.dry_run || remote.is_some() {
        None
    } else {
        let key = database_key(&settings)?;
        let data = args.data.unwrap_or(settings.data);
        let store = match open_for_import(&data, key) {
            Ok(store) => store,
            Err(AdminOpen::InUse) => {
                return Err(format!(
                    "{} is open in a running Braid: import through its API with --server URL --token T, or stop it",
                    data.display()
                )
                .into());
            }
            Err(AdminOpen::Failed(message)) => return Err(message.into()),
        };
        if !store.snapshot()?.is_live(braid::fhir::ResourceType::PATIENT, &args.patient)? {
            close(store).await;
            return Err(format!("Patient/{} does not exist in {}", args.patient, data.display()).into());
        }
        Some(store)
    };
    let ingest::run::Import { mut batches, progress, reading } =
        match ingest::run::start(&args.file, format, &args.patient, args.timezone.clone()) {
            Ok(import) => import,
            Err(error) => {
                if let Some(store) = store {
                    close(store).await;
                }
                return Err(error.into());
            }
        };
    let bar = progress_bar(progress.total);
    let mut written = Summary::default();
    let mut failure = None;
    let stdout = std::io::stdout();
    while let Some(batch) = batches.recv().await {
        bar.set_position(progress.meter.read.load(std::sync::atomic::Ordering::Relaxed));
        if let Some(remote) = &remote {
            if let Err(error) = remote.write(batch, &mut written).await {
                failure = Some(error);
                break;
            }
            continue;
        }
        match &store {
            None => {
                use std::io::Write;
                let mut out = stdout.lock();
                for resource in batch.iter().filter(|resource| resource["resourceType"] == "Observation") {
                    writeln!(out, "{resource}")?;
                }
            }
            Some(store) => {
                if let Err(error) = ingest::write(store, batch, &mut written).await {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
    }
    drop(batches);
    bar.finish_and_clear();
    let read = reading.await?;
    if let Some(store) = store {
        close(store).await;
    }
    if let Some(error) = failure {
        return Err(format!("writing failed: {error}").into());
    }
    let mut summary = read?;
    summary.add_writes(&written);
    eprintln!(
        "{} records: {} Observations made ({} samples merged per minute), {} created, {} updated, {} unchanged, {} refused",
        summary.records,
        summary.observations,
        summary.aggregated_samples,
        summary.created,
        summary.updated,
        summary.unchanged + summary.duplicates,
        summary.rejected
    );
    for problem in &summary.problems {
        eprintln!("  refused {}: {}", problem.at, problem.reason);
    }
    if let Some(zone) = &summary.time_zone {
        eprintln!("times without an offset were read as local times in {zone}");
    }
    if !args.dry_run {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// A progress bar on stderr (hidden when stderr is not a terminal) over `total` bytes.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} at {bytes_per_sec}, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

/// Runs an operator command: through the running server's socket if there is one, otherwise on
/// the stopped database. A server that starts meanwhile is waited for (its socket opens right
/// after its database).
async fn admin_command(
    data: Option<PathBuf>,
    settings: &Settings,
    request: braid::auth::admin::AdminRequest,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use braid::auth::admin::{self, Sent};
    let data = &data.unwrap_or_else(|| settings.data.clone());
    let key = database_key(settings)?;
    let socket = admin::socket_path(data);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Sent::Answered(answer) = admin::send(&socket, &request)? {
            return answer.map_err(|error| error.message.into());
        }
        match open_for_admin(data, key.clone()) {
            Ok(store) => {
                let loaded = braid::sources::Registry::load(&store)
                    .and_then(|sources| Ok((sources, braid::mpi::service::Mpi::open(&store, false)?)));
                let answer = match loaded {
                    Ok((sources, mpi)) => admin::execute(&store, None, &sources, &mpi, request).await,
                    Err(error) => Err(error.into()),
                };
                close(store).await;
                return answer.map_err(|error| error.message.into());
            }
            Err(AdminOpen::InUse) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(AdminOpen::InUse) => {
                return Err(format!(
                    "{} is open in a running Braid that does not answer on {}",
                    data.display(),
                    socket.display()
                )
                .into());
            }
            Err(AdminOpen::Failed(message)) => return Err(message.into()),
        }
    }
}

enum AdminOpen {
    InUse,
    Failed(String),
}

/// Opens the database for an operator command.
fn open_for_admin(path: &std::path::Path, key: Option<Arc<KeyFile>>) -> Result<braid::store::Store, AdminOpen> {
    let options = braid::store::StoreOptions {
        gc_interval: std::time::Duration::ZERO,
        encryption_key: key,
        ..Default::default()
    };
    open_stopped(path, options)
}

/// Opens the database for `braid ingest`: it writes and hardly reads, so small caches keep its
/// memory low whatever the file's size.
fn open_for_import(path: &std::path::Path, key: Option<Arc<KeyFile>>) -> Result<braid::store::Store, AdminOpen> {
    let options = braid::store::StoreOptions {
        gc_interval: std::time::Duration::ZERO,
        encryption_key: key,
        cache_bytes: 32 << 20,
        body_cache_bytes: 0,
        ..Default::default()
    };
    open_stopped(path, options)
}

fn open_stopped(path: &std::path::Path, options: braid::store::StoreOptions) -> Result<braid::store::Store, AdminOpen> {
    braid::store::Store::open(path, options, std::sync::Arc::new(braid::search::SearchIndexer)).map_err(|error| {
        match error {
            braid::store::StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => AdminOpen::InUse,
            other => AdminOpen::Failed(format!("cannot open {}: {other}", path.display())),
        }
    })
}

/// Drops `store` and waits until its writer has closed the file.
async fn close(store: braid::store::Store) {
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn build_dictionary(args: BuildArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (dictionary, samples) = braid::store::dictionary::build(&args.directories, args.size)?;
    std::fs::write(&args.out, &dictionary).map_err(|error| format!("{}: {error}", args.out.display()))?;
    println!("Wrote a {}-byte dictionary trained on {samples} resources to {}.", dictionary.len(), args.out.display());
    Ok(())
}

/// The address clients can use: a wildcard listen address is shown as localhost.
fn display_address(listen: &str, port: u16) -> String {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = if host == "0.0.0.0" || host == "[::]" { "127.0.0.1" } else { host };
    format!("{host}:{port}")
}
