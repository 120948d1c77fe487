//! A `Vec<u8>` field on the wire as serde bytes: serde's own `Vec<u8>`
//! goes through one `u8` at a time on the way in (bincode builds and drops
//! an error value for each byte's bounds check), a few hundred nanoseconds
//! for an inline task argument or result. Bincode writes bytes as it
//! writes a `Vec<u8>`, a length then the bytes, so the wire form is the
//! same (a test checks it). The protocol fingerprint reads only the type
//! files: the `with` attributes there count, this code does not (it must
//! keep the wire form, which the test holds it to).

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Serializer;
use std::fmt;

pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(Bytes)
}

struct Bytes;

impl<'de> Visitor<'de> for Bytes {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Formats that write bytes as a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint is the sender's word: bounded before it sizes anything.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use crate::protocol::Payload;
    use serde::{Deserialize, Serialize};

    /// The form a plain `Vec<u8>` field has.
    #[derive(Serialize, Deserialize)]
    enum Plain {
        Inline(Vec<u8>),
    }

    #[test]
    fn bytes_keep_the_wire_form_of_a_vec() {
        for n in [0usize, 1, 250, 251, 70_000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let ours = codec::encode(&Payload::Inline(data.clone())).unwrap();
            assert_eq!(ours, codec::encode(&Plain::Inline(data.clone())).unwrap());
            match codec::decode::<Payload>(&ours, "a payload").unwrap() {
                Payload::Inline(back) => assert_eq!(back, data),
                other => panic!("{other:?}"),
            }
        }
        // A length past the end of the frame is refused, not allocated.
        let mut short = codec::encode(&Payload::Inline(vec![1; 300])).unwrap();
        short.truncate(100);
        assert!(codec::decode::<Payload>(&short, "a payload").is_err());
    }
}
