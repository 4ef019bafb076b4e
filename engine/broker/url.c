/*
 * url.c - a broker's address, redis://[user:password@]HOST:PORT[/DB], read
 * from what a user typed. A wrong URL is the first thing a user meets, so
 * each message names the part that is wrong and shows the form; the
 * password never appears in one (messages end up in logs).
 *
 * As redis-cli reads it: user info without a ':' is a password alone; the
 * user info ends at the last '@', so a password may hold an '@' or a '/'
 * (or any byte %-encoded).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "url.h"

#define FORM "redis://[user:password@]HOST:PORT[/DB]"
#define DEFAULT_PORT 6379
#define MAX_DB 1000000000 /* Redis's databases setting is an int */

/* The URL as a message may show it: the password, when there may be one,
 * replaced by "***". */
static void masked(const char *url, char *out, size_t n) {
  const char *rest = strstr(url, "://");
  rest = rest ? rest + 3 : url;
  const char *at = strrchr(rest, '@');
  const char *colon = at ? memchr(rest, ':', (size_t)(at - rest)) : NULL;
  if (!colon) {
    snprintf(out, n, "%s", url);
    return;
  }
  snprintf(out, n, "%.*s***%s", (int)(colon + 1 - url), url, at);
}

static int fail(char *err, size_t n, const char *url, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t n, const char *url, const char *fmt, ...) {
  char shown[320], why[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  masked(url, shown, sizeof shown);
  snprintf(err, n, "bad broker URL '%s': %s (the form is " FORM ")", shown, why);
  return -1;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* %-decodes s[0..len) into out (size n, NUL-terminated): 0, or -1 for a bad
 * escape, -2 when it does not fit. */
static int decode(const char *s, size_t len, char *out, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      if (i + 2 >= len) return -1;
      int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      c = hi * 16 + lo;
      i += 2;
    }
    if (o + 1 >= n) return -2;
    out[o++] = (char)c;
  }
  out[o] = '\0';
  return 0;
}

/* Reads the digits at *p as a number from min to max; -1 when there are
 * none or it is out of range. */
static long number(const char **p, long min, long max) {
  const char *s = *p;
  long v = 0;
  if (*s < '0' || *s > '9') return -1;
  for (; *s >= '0' && *s <= '9'; s++) {
    v = v * 10 + (*s - '0');
    if (v > max) return -1;
  }
  *p = s;
  return v < min ? -1 : v;
}

static int host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

static int ipv6_char(char c) { return hexval(c) >= 0 || c == ':' || c == '.' || c == '%'; }

/* The text of s[0..] up to the end or n bytes, for a message. */
static const char *clip(const char *s, char *buf, size_t n) {
  snprintf(buf, n, "%s", s);
  return buf;
}

static int parse_userinfo(const char *url, const char *s, const char *at, lp_broker_url *out,
                          char *err, size_t n) {
  const char *colon = memchr(s, ':', (size_t)(at - s));
  const char *pw = s;
  if (colon) {
    int rc = decode(s, (size_t)(colon - s), out->user, sizeof out->user);
    if (rc == -1) return fail(err, n, url, "the user has a bad %%-escape (%%XX, two hex digits)");
    if (rc == -2)
      return fail(err, n, url, "the user is longer than %zu bytes", sizeof out->user - 1);
    pw = colon + 1;
  }
  int rc = decode(pw, (size_t)(at - pw), out->password, sizeof out->password);
  if (rc == -1) return fail(err, n, url, "the password has a bad %%-escape (%%XX, two hex digits)");
  if (rc == -2)
    return fail(err, n, url, "the password is longer than %zu bytes", sizeof out->password - 1);
  if (out->user[0] && !out->password[0])
    return fail(err, n, url, "user '%s' has no password", out->user);
  return 0;
}

/* The host at *p (a name, IPv4, or [IPv6]): its end in *p. */
static int parse_host(const char *url, const char **p, lp_broker_url *out, char *err, size_t n) {
  const char *s = *p, *end;
  char buf[64];
  if (*s == '[') {
    end = strchr(s, ']');
    if (!end) return fail(err, n, url, "an IPv6 address in '[' has no closing ']'");
    s++;
    if (end == s) return fail(err, n, url, "the host is empty");
    for (const char *c = s; c < end; c++)
      if (!ipv6_char(*c))
        return fail(err, n, url, "'%.*s' is not an IPv6 address", (int)(end - s), s);
    *p = end + 1;
  } else {
    end = s;
    while (host_char(*end)) end++;
    if (end == s) {
      if (*s == ':' && s[1] == ':')
        return fail(err, n, url, "an IPv6 address goes in brackets, like [::1]:6379");
      if (*s == '\0' || *s == ':' || *s == '/') return fail(err, n, url, "the host is empty");
      return fail(err, n, url, "the host cannot hold '%c'", *s);
    }
    if (*end && *end != ':' && *end != '/')
      return fail(err, n, url, "the host cannot hold '%s'", clip(end, buf, 2));
    *p = end;
  }
  if ((size_t)(end - s) >= sizeof out->host)
    return fail(err, n, url, "the host is longer than %zu bytes", sizeof out->host - 1);
  memcpy(out->host, s, (size_t)(end - s));
  out->host[end - s] = '\0';
  return 0;
}

int lp_broker_url_parse(const char *url, lp_broker_url *out, char *err, size_t n) {
  char buf[64];
  memset(out, 0, sizeof *out);
  out->port = DEFAULT_PORT;
  if (!url || !*url) return fail(err, n, "", "it is empty");
  if (strncmp(url, "rediss://", 9) == 0)
    return fail(err, n, url,
                "rediss:// (TLS) is not supported by hiredis 0.14: carry the connection over an "
                "SSH or stunnel tunnel and give its local end as redis://");
  const char *sep = strstr(url, "://");
  if (!sep || strncmp(url, "redis://", 8) != 0) {
    if (sep) return fail(err, n, url, "the scheme is '%.*s', not redis", (int)(sep - url), url);
    return fail(err, n, url, "it does not start with redis://");
  }
  const char *s = url + 8;
  /* The user info ends at the last '@': a password may hold one. */
  const char *at = strrchr(s, '@');
  if (at) {
    if (parse_userinfo(url, s, at, out, err, n) != 0) return -1;
    s = at + 1;
  }
  if (parse_host(url, &s, out, err, n) != 0) return -1;
  if (*s == ':') {
    s++;
    const char *end = s + strcspn(s, "/");
    const char *digits = s;
    long port = number(&digits, 1, 65535);
    if (port < 0 || digits != end)
      return fail(err, n, url, "the port must be a number from 1 to 65535, got '%.*s'",
                  (int)(end - s), s);
    out->port = (int)port;
    s = end;
  }
  if (*s == '/' && s[1]) {
    s++;
    long db = number(&s, 0, MAX_DB);
    if (db < 0) return fail(err, n, url, "the db must be a number, got '%s'", clip(s, buf, 32));
    out->db = (int)db;
  } else if (*s == '/') {
    s++;
  }
  if (*s) return fail(err, n, url, "unexpected '%s' at the end", clip(s, buf, sizeof buf));
  return 0;
}

void lp_broker_url_show(const lp_broker_url *u, char *out, size_t n) {
  int ipv6 = strchr(u->host, ':') != NULL;
  char db[24] = "";
  if (u->db) snprintf(db, sizeof db, "/%d", u->db);
  snprintf(out, n, "redis://%s%s%s%s%s:%d%s", u->user, u->user[0] ? "@" : "", ipv6 ? "[" : "",
           u->host, ipv6 ? "]" : "", u->port, db);
}
