//! Arbitrary bytes as a message body. Invariants: no panic; whatever decodes re-encodes to
//! something that decodes to the same message (the encoder is canonical, the decoder lenient).
#![no_main]

use bytes::Bytes;
use clearskies_proto::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(Some(message)) = Message::decode(&body) {
        let again = Bytes::from(message.encode());
        assert_eq!(Message::decode(&again), Ok(Some(message)));
    }
});
