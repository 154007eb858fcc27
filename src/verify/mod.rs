//! `verify/`: numerical proof that an import lost nothing (parity reports, round trips).
