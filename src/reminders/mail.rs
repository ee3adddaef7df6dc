//! Email for reminders, through an SMTP server (lettre).
//!
//! `smtp_url` names the server as lettre reads it: `smtp://host:587?tls=required` (STARTTLS,
//! refused without it), `smtps://host:465` (TLS from the start), or `smtp://host:25` (plain: a
//! relay on the same machine), with `user:password@` when the server wants a login. The URL is a secret when it holds a password:
//! it is never logged, and errors never repeat it.
//!
//! What an email says is kept to the least: that there is an appointment, when, with which
//! provider, and where to see it. Email is not a private channel, so the appointment's
//! description (which may name a condition) stays in the record.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long one email may take to be handed over.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends reminder emails through one SMTP server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// One reminder email.
#[derive(Debug, Clone)]
pub struct Reminder {
    pub to: String,
    /// When the appointment is, as the reminder's text writes it.
    pub when: String,
    pub provider: Option<String>,
    pub portal_url: Option<String>,
}

impl Mailer {
    /// A mailer for the server at `url`, sending from `from` (`Name <address>` or an address).
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let from: Mailbox = from.parse().map_err(|_| format!("smtp_from: '{from}' is not an email address"))?;
        check_encrypted(url)?;
        // lettre's error would repeat the URL, password included: say what is wrong without it.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| "smtp_url is not an SMTP URL (smtp://host:port or smtps://host:port, with user:password@ when the server wants a login)".to_owned())?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        Ok(Mailer { transport, from })
    }

    pub async fn send(&self, reminder: &Reminder) -> Result<(), String> {
        let to: Mailbox = reminder.to.parse().map_err(|_| "the patient's email address is not valid".to_owned())?;
        let with = reminder.provider.as_deref().map(|provider| format!(" with {provider}")).unwrap_or_default();
        let see = match &reminder.portal_url {
            Some(url) => format!("You can see it in your health record: {url}"),
            None => "You can see it in your health record.".to_owned(),
        };
        let body = format!(
            "Hello,\n\nThis is a reminder that you have an appointment on {when}{with}.\n\n{see}\n\n\
             If you cannot come, please contact the provider to change or cancel it.\n",
            when = reminder.when
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Appointment reminder")
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|error| format!("the email could not be made: {error}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|error| format!("the SMTP server refused or failed: {error}"))
    }
}

/// Refuses a connection that would carry the login and the patients' emails in clear over a
/// network: plain `smtp://` only to a relay on this machine, STARTTLS only when required (an
/// opportunistic one can be stripped by anyone on the path). Never repeats the URL.
fn check_encrypted(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or("smtp_url is not an SMTP URL (smtp://… or smtps://…)")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let tls = rest
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("tls="));
    match (scheme, tls) {
        ("smtps", None) | ("smtp", Some("required")) => Ok(()),
        ("smtp", None) if loopback => Ok(()),
        ("smtp", Some("opportunistic")) => {
            Err("smtp_url: tls=opportunistic can be stripped on the way; use tls=required, or smtps://".into())
        }
        ("smtp", None) => {
            Err("smtp_url: plain smtp:// only to a relay on this machine (127.0.0.1, [::1], localhost); \
                               use smtp://host:587?tls=required or smtps://host:465"
                .into())
        }
        _ => Err("smtp_url is not an SMTP URL (smtp://host:587?tls=required, smtps://host:465 or smtp://127.0.0.1:25)"
            .into()),
    }
}

/// Whether `text` is an email address the mailer can send to.
pub fn is_address(text: &str) -> bool {
    text.len() <= 254 && text.parse::<lettre::Address>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_encrypted_connections_leave_the_machine_and_errors_never_repeat_the_url() {
        for good in [
            "smtps://user:secret@mail.example:465",
            "smtp://user:secret@mail.example:587?tls=required",
            "smtp://127.0.0.1:2525",
            "smtp://[::1]:25",
            "smtp://localhost",
        ] {
            assert!(check_encrypted(good).is_ok(), "{good}");
        }
        for bad in [
            "smtp://user:secret@mail.example:25",
            "smtp://user:secret@mail.example:587?tls=opportunistic",
            "ftp://user:secret@mail.example",
            "user:secret@mail.example",
        ] {
            let error = check_encrypted(bad).unwrap_err();
            assert!(!error.contains("secret") && !error.contains("mail.example"), "{error}");
        }
    }
}
