//! Parsing what arrives: recipient addresses (the address grammar) and mail bodies (the SMS
//! text). Both are sans-IO: strings and bytes in, values out.

pub mod address;
pub mod body;
