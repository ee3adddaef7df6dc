//! Operator commands on the authorization records (`braid client ...`, `braid keys rotate`),
//! the same whether Braid is running or stopped.
//!
//! Only one process can open the database. While Braid runs, it listens on a Unix socket next to
//! the database file (`<data>.admin.sock`, mode 0600), and the command line sends its request
//! there; while Braid is stopped, the command line opens the database itself. Both paths end in
//! [`execute`]. The socket is reachable only by whoever may read the database file anyway, so it
//! needs no secret of its own, and nothing of it listens on the network.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AuthState;
use super::clients::{self, NewClient};
use super::users::{self, NewUser};
use crate::mpi::service::Mpi;
use crate::sources::Registry;
use crate::store::Store;

/// Largest request or reply exchanged over the admin socket.
pub const MAX_ADMIN_MESSAGE_BYTES: usize = 1 << 20;

/// One operator command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    AddClient {
        client: NewClient,
    },
    ListClients,
    RemoveClient {
        client_id: String,
    },
    RotateKeys,
    AddUser {
        user: NewUser,
    },
    ListUsers,
    RemoveUser {
        username: String,
    },
    ResetTotp {
        username: String,
    },
    /// An initial access token for dynamic registration beyond patient-facing apps.
    RegistrationToken {
        uses: u32,
        hours: u64,
    },
    /// An EHR launch of a client with a patient in context.
    CreateLaunch {
        client_id: String,
        patient: String,
    },
    /// A push source and its backend client (see [`crate::sources`]).
    AddSource {
        source: crate::sources::NewSource,
    },
    ListSources,
    ShowSource {
        name: String,
    },
    RemoveSource {
        name: String,
    },
    /// One pull of a pull source, now.
    SyncSource {
        name: String,
    },
    /// Train the master patient index's parameters on its Patients, then re-score its links.
    TrainMpi {
        /// Random pairs that estimate `u` (default: the training's own).
        u_pairs: Option<usize>,
    },
    /// The master patient index's parameters, feed position and figures.
    ShowMpi,
}

/// Why a command failed: the operator's mistake (`bad_request`) or the server's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    pub bad_request: bool,
    pub message: String,
}

impl AdminError {
    fn fault(message: impl Into<String>) -> AdminError {
        AdminError { bad_request: false, message: message.into() }
    }
}

impl From<crate::fhir::FhirError> for AdminError {
    fn from(error: crate::fhir::FhirError) -> Self {
        let message = error.issues.iter().map(|issue| issue.diagnostics.as_str()).collect::<Vec<_>>().join("; ");
        AdminError { bad_request: error.status() < 500, message }
    }
}

impl From<crate::store::StoreError> for AdminError {
    fn from(error: crate::store::StoreError) -> Self {
        AdminError::fault(error.to_string())
    }
}

/// Runs a command on `store`; `auth` is the running server's authorization state, told of new
/// keys at once (`None` when stopped, or when authorization is off); `sources` are the
/// server's sources (or those of the stopped database).
pub async fn execute(
    store: &Store,
    auth: Option<&AuthState>,
    sources: &Registry,
    mpi: &Mpi,
    request: AdminRequest,
) -> Result<Value, AdminError> {
    let no_source = |name: &str| AdminError { bad_request: true, message: format!("there is no source {name}") };
    match request {
        AdminRequest::AddSource { source } => Ok(sources.add(source).await?),
        AdminRequest::ListSources => Ok(Value::Array(sources.list()?.iter().map(crate::sources::describe).collect())),
        AdminRequest::ShowSource { name } => match sources.show(&name)? {
            Some(record) => Ok(crate::sources::describe(&record)),
            None => Err(no_source(&name)),
        },
        AdminRequest::SyncSource { name } => {
            let run = sources.sync(&name).await?;
            Ok(json!({"source": name, "run": run}))
        }
        AdminRequest::RemoveSource { name } => {
            // A push source's client goes with it, and so do its tokens (see `RemoveClient`).
            let client_id = sources.get(&name).and_then(|source| source.client_id.clone());
            if sources.remove(&name).await? {
                if let (Some(auth), Some(client_id)) = (auth, client_id) {
                    auth.client_removed(&client_id);
                }
                Ok(json!({"removed": name}))
            } else {
                Err(no_source(&name))
            }
        }
        AdminRequest::TrainMpi { u_pairs } => {
            let mut options = crate::mpi::train::TrainingOptions::default();
            if let Some(pairs) = u_pairs {
                options.u_pairs = pairs.clamp(1_000, crate::mpi::train::MAX_U_PAIRS);
            }
            Ok(mpi.train(options).await?)
        }
        AdminRequest::ShowMpi => Ok(mpi.describe()?),
        AdminRequest::AddClient { client } => {
            let created = clients::add(store, client, super::now_secs()).await?;
            let mut described = clients::describe(&created.client);
            if let Some(secret) = created.secret {
                described["client_secret"] = secret.into();
            }
            Ok(described)
        }
        AdminRequest::ListClients => Ok(Value::Array(clients::list(store)?.iter().map(clients::describe).collect())),
        AdminRequest::RemoveClient { client_id } => {
            if clients::remove(store, &client_id).await? {
                if let Some(auth) = auth {
                    auth.client_removed(&client_id);
                }
                Ok(json!({"removed": client_id}))
            } else {
                Err(AdminError { bad_request: true, message: format!("there is no client {client_id}") })
            }
        }
        AdminRequest::RotateKeys => {
            let kids = match auth {
                Some(auth) => auth.rotate_keys().await?,
                None => super::keys::rotate_all(store).await?,
            };
            Ok(json!({"kid": kids.first(), "id_token_kid": kids.get(1)}))
        }
        AdminRequest::AddUser { user } => Ok(users::describe(&users::add(store, user, super::now_secs()).await?)),
        AdminRequest::ListUsers => Ok(Value::Array(users::list(store)?.iter().map(users::describe).collect())),
        AdminRequest::RemoveUser { username } => {
            if users::remove(store, &username).await? {
                Ok(json!({"removed": username}))
            } else {
                Err(AdminError { bad_request: true, message: format!("there is no user {username}") })
            }
        }
        AdminRequest::RegistrationToken { uses, hours } => {
            let token = super::registration::issue_initial_token(store, uses, hours).await?;
            Ok(json!({"initial_access_token": token, "uses": uses.max(1), "expires_in": hours.max(1) * 3600}))
        }
        AdminRequest::CreateLaunch { client_id, patient } => {
            let launch = super::flow::create_launch(store, &client_id, &patient).await?;
            Ok(
                json!({"launch": launch, "client_id": client_id, "patient": patient, "expires_in": super::flow::LAUNCH_LIFETIME_SECS}),
            )
        }
        AdminRequest::ResetTotp { username } => {
            if users::reset_totp(store, &username).await? {
                Ok(json!({"reset_totp": username}))
            } else {
                Err(AdminError { bad_request: true, message: format!("there is no user {username}") })
            }
        }
    }
}

/// Where a server using the database `data` listens for operator commands.
pub fn socket_path(data: &Path) -> PathBuf {
    crate::store::beside(data, "admin.sock")
}

/// How the command line reached the database.
pub enum Sent {
    /// A running server answered.
    Answered(Result<Value, AdminError>),
    /// No server listens on the socket: the database is not in use (or its server is starting).
    NoServer,
}

/// Sends `request` to the server listening at `socket`, as one HTTP/1.1 request.
pub fn send(socket: &Path, request: &AdminRequest) -> Result<Sent, String> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return Ok(Sent::NoServer) };
    // A pull runs as long as the upstream takes; every other command is quick.
    let timeout = match request {
        AdminRequest::SyncSource { .. } | AdminRequest::TrainMpi { .. } => None,
        _ => Some(Duration::from_secs(60)),
    };
    stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let head = format!(
        "POST /admin HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body)).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.take(MAX_ADMIN_MESSAGE_BYTES as u64 + 4096).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let split = reply.windows(4).position(|window| window == b"\r\n\r\n").ok_or("the server's answer was cut short")?;
    let status_line = String::from_utf8_lossy(&reply[..split]);
    let ok = status_line.split(' ').nth(1) == Some("200");
    let body: Value = serde_json::from_slice(&reply[split + 4..]).map_err(|_| "the server's answer is not JSON")?;
    if ok {
        Ok(Sent::Answered(Ok(body)))
    } else {
        let error = serde_json::from_value(body).map_err(|_| "the server's error is not readable")?;
        Ok(Sent::Answered(Err(error)))
    }
}
