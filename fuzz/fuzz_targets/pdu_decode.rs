//! Arbitrary octets into the TPDU decoders: they must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mail2sms_fuzz::pdu_decode(data));
