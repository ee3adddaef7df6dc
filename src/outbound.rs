//! Braid's outgoing HTTP (client JWKS URLs, pulls from upstream FHIR servers): one way to
//! build a client, and one bounded way to read a body.

/// An HTTP client from `builder`, with the process-wide rustls provider installed first
/// (reqwest's rustls needs it; another part of Braid, or a test, may have installed it
/// already, which is as good).
pub fn client(builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    builder.build()
}

/// Why a bounded read failed.
#[derive(Debug)]
pub enum ReadError {
    /// The body is larger than the bound.
    TooLarge,
    /// The connection failed (the message names no URL).
    Failed(String),
}

/// The body of `response`, refused once it exceeds `limit` bytes: a remote server decides how
/// much it sends, never how much Braid holds.
pub async fn read_capped(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|error| ReadError::Failed(error.without_url().to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
