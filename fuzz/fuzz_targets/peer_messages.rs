//! What another gateway sends: the three peer requests (read, checkpoint, blocks) on the
//! custodian's side, and the grant and block answers on the requester's side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_gateway::peer::{decode_blocks, decode_grant, PeerRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let path = PeerRequest::PATHS[usize::from(selector) % PeerRequest::PATHS.len()];
    match PeerRequest::decode(path, body) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.status(), 400),
    }
    let _ = decode_grant("hospital-b", body);
    if let Ok(blocks) = decode_blocks("hospital-b", body) {
        for b in &blocks {
            let _ = b.hash();
        }
    }
});
