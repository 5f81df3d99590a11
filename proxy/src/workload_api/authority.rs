//! Clients built on gRPC's C core (Python, C++, Ruby, PHP) and grpc-java
//! send a Unix socket's path as `:authority` (`run%2Fpalisade%2F...`),
//! which h2 refuses as malformed (PROTOCOL_ERROR). Every header block the
//! app sends passes through here: HPACK-decoded, an `:authority` that is no
//! URI authority becomes `localhost` (what grpc-go and tonic send), and it
//! is encoded again. Every other frame passes unchanged.

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
/// h2's SETTINGS_MAX_FRAME_SIZE, which the client must respect.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (its frames together) ends the connection.
const MAX_BLOCK: usize = 64 * 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is over the 16 KiB limit")]
    TooLarge(usize),
    #[error("a header block over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("malformed HEADERS frame")]
    Malformed,
    #[error("a {0:#x} frame inside a header block, or a CONTINUATION outside one")]
    Interleaved(u8),
    #[error("HPACK: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// Copy the client's side of one HTTP/2 connection from `from` to `to`,
/// rewriting header blocks as above, until `from` ends or breaks the rules.
pub async fn relay<R, W>(mut from: R, mut to: W) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE_LEN];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    let mut blocks = Blocks::default();
    let mut out = BytesMut::new();
    loop {
        let Some(frame) = read_frame(&mut from).await? else {
            return Ok(());
        };
        match frame.kind {
            HEADERS => {
                let mut block = frame.fragment()?;
                let mut end = frame.flags & END_HEADERS != 0;
                while !end {
                    let next = read_frame(&mut from).await?.ok_or(FrameError::Malformed)?;
                    if next.kind != CONTINUATION || next.stream != frame.stream {
                        return Err(FrameError::Interleaved(next.kind));
                    }
                    if block.len() + next.payload.len() > MAX_BLOCK {
                        return Err(FrameError::BlockTooLarge);
                    }
                    block.extend_from_slice(&next.payload);
                    end = next.flags & END_HEADERS != 0;
                }
                let block = blocks.rewrite(&block)?;
                write_headers(&mut out, frame.stream, frame.flags & END_STREAM, &block);
            }
            CONTINUATION => return Err(FrameError::Interleaved(CONTINUATION)),
            _ => frame.write(&mut out),
        }
        to.write_all(&out).await?;
        out.clear();
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` at a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    match from.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut h = &head[..];
    let len = (h.get_u16() as usize) << 8 | h.get_u8() as usize;
    let (kind, flags, stream) = (h.get_u8(), h.get_u8(), h.get_u32());
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind,
        flags,
        stream,
        payload,
    }))
}

impl Frame {
    /// A HEADERS frame's block fragment, without padding and priority.
    fn fragment(&self) -> Result<Vec<u8>, FrameError> {
        let mut p = &self.payload[..];
        let mut pad = 0;
        if self.flags & PADDED != 0 {
            pad = *p.first().ok_or(FrameError::Malformed)? as usize;
            p = &p[1..];
        }
        if self.flags & PRIORITY != 0 {
            p = p.get(5..).ok_or(FrameError::Malformed)?;
        }
        let end = p.len().checked_sub(pad).ok_or(FrameError::Malformed)?;
        Ok(p[..end].to_vec())
    }

    fn write(&self, out: &mut BytesMut) {
        put_head(out, self.payload.len(), self.kind, self.flags, self.stream);
        out.put_slice(&self.payload);
    }
}

fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// `block` as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_headers(out: &mut BytesMut, stream: u32, end_stream: u8, block: &[u8]) {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut kind = HEADERS;
    let mut flags = end_stream;
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        put_head(
            out,
            chunk.len(),
            kind,
            flags | if last { END_HEADERS } else { 0 },
            stream,
        );
        out.put_slice(chunk);
        if last {
            return;
        }
        (kind, flags) = (CONTINUATION, 0);
    }
}

/// The HPACK state of both sides: the client's encoder (mirrored by
/// `decoder`) and the server's decoder (fed by `encoder`).
#[derive(Default)]
struct Blocks {
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Blocks {
    fn rewrite(&mut self, block: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut headers = self.decoder.decode(block).map_err(FrameError::Hpack)?;
        for (name, value) in &mut headers {
            if name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err() {
                *value = b"localhost".to_vec();
            }
        }
        Ok(self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..]))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Frame {
            kind,
            flags,
            stream,
            payload: payload.to_vec(),
        }
        .write(&mut out);
        out.to_vec()
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// What the server sees: every header block decoded, every other frame
    /// kind with its payload.
    fn server_view(bytes: &[u8]) -> Vec<(u8, Headers, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut rest = &bytes[PREFACE_LEN..];
        let mut decoder = Decoder::new();
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
            let kind = rest[3];
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            if kind == HEADERS {
                assert!(rest[4] & END_HEADERS != 0);
                seen.push((kind, decoder.decode(payload).unwrap(), Vec::new()));
            } else {
                seen.push((kind, Vec::new(), payload.to_vec()));
            }
            rest = &rest[FRAME_HEADER_LEN + len..];
        }
        seen
    }

    async fn relayed(input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        relay(input, &mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_passes() {
        let mut client = Encoder::new();
        let request: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"run%2Fpalisade%2Fspiffe%2Fworkload.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = client.encode(request.clone());
        // The same request again: now mostly indexed in the dynamic table.
        let again = client.encode(request.clone());
        // Padded, with priority, split over a CONTINUATION.
        let mut padded = vec![2u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(&block[..3]);
        padded.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(4, 0, 0, &[]));
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[3..]));
        input.extend(frame(0, END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &again));
        let seen = server_view(&relayed(&input).await.unwrap());

        let expected: Headers = request
            .iter()
            .map(|(n, v)| {
                let v: &[u8] = if *n == b":authority" { b"localhost" } else { v };
                (n.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], (4, vec![], vec![]));
        assert_eq!(seen[1].1, expected);
        assert_eq!(seen[2], (0, vec![], b"\0\0\0\0\0".to_vec()));
        assert_eq!(seen[3].1, expected);
    }

    #[tokio::test]
    async fn a_valid_authority_is_kept() {
        let block = Encoder::new().encode([(&b":authority"[..], &b"localhost:1"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let seen = server_view(&relayed(&input).await.unwrap());
        assert_eq!(
            seen[0].1,
            vec![(b":authority".to_vec(), b"localhost:1".to_vec())]
        );
    }

    #[tokio::test]
    async fn broken_framing_ends_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0, 0, 1, b"data"));
        assert!(matches!(
            relayed(&input).await,
            Err(FrameError::Interleaved(0))
        ));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
        assert!(matches!(relayed(&input).await, Err(FrameError::Malformed)));
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0x40, 1, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            relayed(&input).await,
            Err(FrameError::TooLarge(_))
        ));
    }
}
