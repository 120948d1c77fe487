//! Object transfer between raylets, on a data connection of its own: a
//! range of a stored object's bytes, asked for and sent raw after a
//! header.

use super::*;

/// The object-transfer protocol between raylets.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Transfer {
    /// Raylet to raylet, on a data connection: send bytes `start ..
    /// start + count` of the object stored at `node/offset/len/tag`, from
    /// the primary block if this is `node`, else from this node's copy.
    /// Answered by `ObjectBytes` followed by the raw bytes.
    ReadObject {
        node: u16,
        offset: u64,
        len: u64,
        tag: u64,
        start: u64,
        count: u64,
    },
    /// `len` raw bytes follow this frame on the stream (or `error`).
    ObjectBytes {
        result: std::result::Result<u64, Error>,
    },
}
