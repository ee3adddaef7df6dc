//! The operator's socket: a second HTTP server, on a Unix socket next to the database file,
//! that runs [`crate::auth::admin`] commands while Braid serves (see that module for why a
//! socket, and who can reach it).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};

use crate::auth::AuthState;
use crate::auth::admin::{self, AdminRequest, MAX_ADMIN_MESSAGE_BYTES};
use crate::mpi::service::Mpi;
use crate::sources::Registry;
use crate::store::Store;

struct AdminState {
    store: Store,
    auth: Option<Arc<AuthState>>,
    sources: Arc<Registry>,
    mpi: Arc<Mpi>,
}

/// Binds the socket at `socket` (replacing a stale one left by a server that did not stop
/// cleanly: the caller holds the database, so no other server can be using it), readable and
/// writable by its owner only, and returns the server answering on it.
pub fn serve(
    socket: &Path,
    store: Store,
    auth: Option<Arc<AuthState>>,
    sources: Arc<Registry>,
    mpi: Arc<Mpi>,
) -> std::io::Result<Server> {
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let state = web::Data::new(AdminState { store, auth, sources, mpi });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().limit(MAX_ADMIN_MESSAGE_BYTES))
            .route("/admin", web::post().to(command))
    })
    .workers(1)
    .disable_signals()
    .listen_uds(listener)?
    .run())
}

async fn command(state: web::Data<AdminState>, request: web::Json<AdminRequest>) -> HttpResponse {
    match admin::execute(&state.store, state.auth.as_deref(), &state.sources, &state.mpi, request.into_inner()).await {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(error) if error.bad_request => HttpResponse::BadRequest().json(error),
        Err(error) => {
            tracing::error!(error = %error.message, "an operator command failed");
            HttpResponse::InternalServerError().json(error)
        }
    }
}
