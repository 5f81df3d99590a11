//! The HTTP/1 request-head checks behind `h1_guard`: finding where a head
//! ends, the Content-Length/Transfer-Encoding rules against smuggling, the
//! header count and size, and chunk-size lines.

use palisade_policy::normalize::Rejection;

/// A request line for the head that makes hyper answer 431 (more header
/// fields than it accepts), for heads the guard finds too large.
const TOO_LARGE_LINE: &[u8] = b"GET / HTTP/1.1\r\n";

/// The limits a head is checked against (the guard's).
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub reject_fragment: bool,
}

/// What follows an accepted head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The next request's head (no body).
    Head,
    /// A Content-Length body of this many bytes.
    Body(u64),
    /// A chunked body.
    Chunked,
    /// No more HTTP/1 framing: an upgrade or CONNECT.
    Passthrough,
}

/// The checks on one complete request head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadCheck {
    /// What follows the head.
    Ok(Next),
    /// Replace it so hyper answers 431.
    TooLarge(&'static str),
    /// Replace it so hyper answers 400.
    Refuse(&'static str),
}

/// Append `data` to `block` up to and including the empty line that ends a
/// header block. Returns (bytes taken, whether the block is complete).
pub(super) fn take_block(block: &mut Vec<u8>, data: &[u8]) -> (usize, bool) {
    let mut from = 0;
    while let Some(p) = data[from..].iter().position(|b| *b == b'\n') {
        let end = from + p + 1;
        block.extend_from_slice(&data[from..end]);
        from = end;
        if block.ends_with(b"\n\r\n") || block.ends_with(b"\n\n") {
            return (from, true);
        }
    }
    block.extend_from_slice(&data[from..]);
    (data.len(), false)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// The checks on a complete request head, and where its body ends.
pub(super) fn check_head(head: &[u8], limits: HeadLimits) -> HeadCheck {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (mut fields, mut cl_lines, mut te_lines) = (0usize, 0usize, 0usize);
    let mut length: Option<u64> = None;
    let (mut chunked, mut te_list, mut bad_cl) = (false, false, false);
    let (mut upgrade, mut connection_upgrade) = (false, false);
    for line in lines.filter(|l| !l.is_empty()) {
        fields += 1;
        // A line without a colon is hyper's to refuse.
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_lines += 1;
            match std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(v) => {
                    length = v.parse().ok().or_else(|| {
                        bad_cl = true;
                        None
                    })
                }
                None => bad_cl = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            te_list |= value.contains(&b',');
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        }
    }
    if fields > limits.max_headers {
        return HeadCheck::TooLarge("too_many_headers");
    }
    if head.len() > limits.max_header_bytes {
        return HeadCheck::TooLarge("header_too_large");
    }
    if te_lines > 0 && cl_lines > 0 {
        return HeadCheck::Refuse("content_length_with_transfer_encoding");
    }
    if te_lines > 1 || te_list {
        return HeadCheck::Refuse("repeated_transfer_encoding");
    }
    if bad_cl {
        return HeadCheck::Refuse("invalid_content_length");
    }
    if cl_lines > 1 {
        return HeadCheck::Refuse("repeated_content_length");
    }
    if te_lines == 1 && !chunked {
        return HeadCheck::Refuse("unsupported_transfer_encoding");
    }
    // `#` is valid in neither method nor version: it is the target's.
    if limits.reject_fragment && request_line.contains(&b'#') {
        return HeadCheck::Refuse(Rejection::Fragment.reason());
    }
    if request_line.starts_with(b"CONNECT ") || (upgrade && connection_upgrade) {
        return HeadCheck::Ok(Next::Passthrough);
    }
    HeadCheck::Ok(match (chunked, length) {
        (true, _) => Next::Chunked,
        (false, Some(n)) if n > 0 => Next::Body(n),
        _ => Next::Head,
    })
}

/// The size in a chunk-size line (`1a;ext=1`), or `None` if it is not one.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = trim(&line[digits..]);
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// Bytes that make hyper answer 431: one header field more than it
/// accepts. `prior_tail` is the last byte of this head that hyper already
/// holds, if any: then only fields follow, starting on a fresh line.
pub(super) fn too_large_head(max_headers: usize, prior_tail: Option<u8>) -> Vec<u8> {
    let mut v = match prior_tail {
        None => TOO_LARGE_LINE.to_vec(),
        Some(b'\n') => Vec::new(),
        Some(b'\r') => b"\n".to_vec(),
        Some(_) => b"\r\n".to_vec(),
    };
    for _ in 0..=max_headers {
        v.extend_from_slice(b"x: y\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v
}
