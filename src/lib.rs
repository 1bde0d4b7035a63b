//! mail2sms: an email-to-SMS gateway. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod config;
pub mod intake;
pub mod modem;
pub mod notify;
pub mod parse;
pub mod peer;
pub mod policy;
pub mod queue;
pub mod route;
pub mod sms;
