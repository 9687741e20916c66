//! STUB — replaced by the real module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader;
impl ProxyHeader {
    pub fn source(&self) -> Option<std::net::SocketAddr> {
        todo!()
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyError;
impl std::fmt::Display for ProxyError {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        todo!()
    }
}
pub struct ProxyReader;
impl ProxyReader {
    pub fn new(_v: Versions, _m: usize) -> Self {
        todo!()
    }
    pub fn feed<'a>(
        &mut self,
        _d: &'a [u8],
    ) -> Result<Option<(ProxyHeader, &'a [u8])>, ProxyError> {
        todo!()
    }
}
pub fn looks_like_proxy_header(d: &[u8]) -> bool {
    d.starts_with(b"PROXY ") || d.starts_with(b"\r\n\r\n\0\r\nQUIT\n")
}
