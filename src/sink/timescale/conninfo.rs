//! libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) taken out of a
//! connection string, so that tokio-postgres, which knows only three of the five `sslmode`s
//! and none of the files, parses the rest. Both forms are read as tokio-postgres reads them:
//! `postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem` (percent-encoded values) and
//! `host=db sslmode=verify-full sslrootcert='/etc/ca.pem'` (values quoted with `'`, `\`
//! escaping the next character).

/// The parameters this module takes out.
pub const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string without its TLS parameters, and those parameters (key, decoded value)
/// in the order they appeared. A string neither form can read is returned whole, for
/// tokio-postgres to report what is wrong with it.
pub fn take_tls_params(conninfo: &str) -> (String, Vec<(String, String)>) {
    let split = match ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| conninfo.starts_with(**scheme))
    {
        Some(scheme) => split_url(conninfo, scheme.len()),
        None => split_key_values(conninfo),
    };
    split.unwrap_or_else(|| (conninfo.to_owned(), Vec::new()))
}

fn split_url(url: &str, scheme_len: usize) -> Option<(String, Vec<(String, String)>)> {
    // tokio-postgres takes the credentials up to the first `@`, then the query after `?`.
    let after_credentials = url[scheme_len..]
        .find('@')
        .map_or(scheme_len, |at| scheme_len + at + 1);
    let Some(question) = url[after_credentials..].find('?') else {
        return Some((url.to_owned(), Vec::new()));
    };
    let (base, query) = url.split_at(after_credentials + question);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query[1..].split('&') {
        let (key, value) = pair.split_once('=')?;
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8()
            .ok()?;
        if TLS_PARAMS.contains(&key.as_ref()) {
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()?;
            taken.push((key.into_owned(), value.into_owned()));
        } else {
            kept.push(pair);
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Some((rest, taken))
}

fn split_key_values(conninfo: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut rest = conninfo.trim_start();
    while !rest.is_empty() {
        let key_len = rest.find(|c: char| c.is_whitespace() || c == '=')?;
        let key = &rest[..key_len];
        let after_key = rest[key_len..].trim_start().strip_prefix('=')?.trim_start();
        let (value, after_value) = read_value(after_key)?;
        if TLS_PARAMS.contains(&key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push(&rest[..rest.len() - after_value.len()]);
        }
        rest = after_value.trim_start();
    }
    Some((kept.join(" "), taken))
}

/// A value, quoted or not, with `\` escaping the next character; and what follows it.
fn read_value(s: &str) -> Option<(String, &str)> {
    let (quoted, body) = match s.strip_prefix('\'') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            '\'' if quoted => return Some((value, &body[at + 1..])),
            c if c.is_whitespace() && !quoted => return Some((value, &body[at..])),
            c => value.push(c),
        }
    }
    // An unterminated quote, or an empty value: tokio-postgres says which.
    (!quoted && !value.is_empty()).then_some((value, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(conninfo: &str, rest: &str, taken: &[(&str, &str)]) {
        let (got_rest, got_taken) = take_tls_params(conninfo);
        assert_eq!(got_rest, rest, "{conninfo}");
        let got: Vec<(&str, &str)> = got_taken
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, taken, "{conninfo}");
        // What is left parses, and still says everything else.
        if !rest.is_empty() {
            rest.parse::<tokio_postgres::Config>().expect(rest);
        }
    }

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let url = "postgres://u:p@db:5432/x";
        check(url, url, &[]);
        check(
            "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca%201.pem",
            "postgres://u:p@db:5432/x?application_name=a",
            &[("sslmode", "verify-full"), ("sslrootcert", "/etc/ca 1.pem")],
        );
        check(
            "postgresql://db/x?sslcert=/c.pem&sslkey=/k.pem",
            "postgresql://db/x",
            &[("sslcert", "/c.pem"), ("sslkey", "/k.pem")],
        );
        // A `?` in the password is not the query.
        check(
            "postgres://u:p?w@db/x?sslmode=require",
            "postgres://u:p?w@db/x",
            &[("sslmode", "require")],
        );
        check(
            "host=db user=u sslmode=verify-ca   sslrootcert = '/etc/my ca.pem' dbname=x",
            "host=db user=u dbname=x",
            &[("sslmode", "verify-ca"), ("sslrootcert", "/etc/my ca.pem")],
        );
        check(
            r"password='it\'s' sslkey=/k\ 1.pem",
            r"password='it\'s'",
            &[("sslkey", "/k 1.pem")],
        );
        check("host=db", "host=db", &[]);
        check("", "", &[]);
        // Unreadable strings are left whole for tokio-postgres to explain.
        for bad in ["host=db sslmode='require", "host=db sslmode=", "host db"] {
            assert_eq!(take_tls_params(bad), (bad.to_owned(), Vec::new()), "{bad}");
        }
    }
}
