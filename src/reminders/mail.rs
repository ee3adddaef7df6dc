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

/// Whether `text` is an email address the mailer can send to.
pub fn is_address(text: &str) -> bool {
    text.len() <= 254 && text.parse::<lettre::Address>().is_ok()
}
