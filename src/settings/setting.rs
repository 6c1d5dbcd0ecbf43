//! How a setting is declared: [`Setting`] (name, default, help and parser, typed),
//! [`Spec`] (the same without the parser, for `--help`, flags and the docs checks), and
//! the `settings!` macro that declares a subsystem's settings and lists them.
//!
//! A setting is read through its constant (`r.get(&listeners::GRPC_PORT)`), so a
//! mistyped name is a compile error; the variable's name is the constant's name.

/// One setting without its parser: its environment variable, default and help. The flag
/// is the variable in lower case with dashes (`GRPC_PORT` is `--grpc-port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// One setting, with the parser that turns its text into a `T`. An empty or unset value
/// means `default`, which must parse (a test checks every one).
#[derive(Debug)]
pub struct Setting<T: 'static> {
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> Setting<T> {
    pub const fn new(
        env: &'static str,
        default: &'static str,
        help: &'static str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Self {
        Setting { env, default, help, parse }
    }

    pub const fn spec(&self) -> Spec {
        Spec { env: self.env, default: self.default, help: self.help }
    }

    /// Whether the default parses with the setting's own parser.
    pub fn check_default(&self) -> Result<(), String> {
        (self.parse)(self.default).map(|_| ()).map_err(|e| format!("default of {} does not parse: {e}", self.env))
    }
}

/// Declares a subsystem's settings, in `--help` order:
///
/// ```text
/// settings! {
///     GRPC_PORT: u16 = "8081", parse_port, "Port of the gRPC listener (0 picks a free port)";
/// }
/// ```
///
/// makes `pub const GRPC_PORT: Setting<u16>` (the variable is named after the constant),
/// `SPECS`, every one of them in order, and, for tests, `check_defaults`.
macro_rules! settings {
    ($($name:ident: $ty:ty = $default:expr, $parse:expr, $help:expr;)*) => {
        $(
            #[doc = $help]
            pub const $name: $crate::settings::Setting<$ty> =
                $crate::settings::Setting::new(stringify!($name), $default, $help, $parse);
        )*

        /// This subsystem's settings, in `--help` order.
        pub(super) const SPECS: &[$crate::settings::Spec] = &[$($name.spec()),*];

        /// Every default that does not parse with its own parser.
        #[cfg(test)]
        pub(super) fn check_defaults() -> Vec<String> {
            [$($name.check_default()),*].into_iter().filter_map(Result::err).collect()
        }
    };
}
pub(super) use settings;

/// A number as a `&'static str`, at compile time: a setting's default taken from the
/// owning module's constant (`decimal!(DEFAULT_MAX_COUNTERS)`), so it is written once.
macro_rules! decimal {
    ($n:expr) => {{
        const N: u64 = $n as u64;
        const DIGITS: [u8; $crate::settings::setting::decimal_len(N)] = $crate::settings::setting::decimal_digits(N);
        match ::core::str::from_utf8(&DIGITS) {
            Ok(text) => text,
            Err(_) => panic!("decimal digits are ASCII"),
        }
    }};
}
pub(super) use decimal;

/// How many decimal digits `n` has.
pub const fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// `n`'s decimal digits; `LEN` is [`decimal_len`]`(n)`.
pub const fn decimal_digits<const LEN: usize>(mut n: u64) -> [u8; LEN] {
    let mut digits = [b'0'; LEN];
    let mut i = LEN;
    while i > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits
}

/// Every spec of `groups`, in order, as one array (`SPECS` is built from the
/// subsystems' lists with it); `N` is their total length.
pub const fn concat<const N: usize>(groups: &[&[Spec]]) -> [Spec; N] {
    let mut all = [Spec { env: "", default: "", help: "" }; N];
    let (mut g, mut k) = (0, 0);
    while g < groups.len() {
        let mut i = 0;
        while i < groups[g].len() {
            all[k] = groups[g][i];
            (i, k) = (i + 1, k + 1);
        }
        g += 1;
    }
    assert!(k == N, "N is the total length of the groups");
    all
}

/// The total length of `groups`.
pub const fn total_len(groups: &[&[Spec]]) -> usize {
    let (mut g, mut n) = (0, 0);
    while g < groups.len() {
        n += groups[g].len();
        g += 1;
    }
    n
}
