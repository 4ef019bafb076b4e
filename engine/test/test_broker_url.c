/*
 * test_broker_url.c - a broker's URL read into its parts (engine/broker/
 * url.c): the forms a user may write, %-decoding, IPv6, the defaults; and
 * each wrong URL refused with a message that says what is wrong, shows the
 * form, and never shows the password.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "url.h"

#define FORM "redis://[user:password@]HOST:PORT[/DB]"

static lp_broker_url parsed(const char *text) {
  lp_broker_url u;
  char err[512] = "";
  int rc = lp_broker_url_parse(text, &u, err, sizeof err);
  if (rc != 0) fprintf(stderr, "unexpected: %s\n", err);
  CHECK_EQ(rc, 0);
  return u;
}

static void shows(const char *text, const char *want) {
  lp_broker_url u = parsed(text);
  char out[512];
  lp_broker_url_show(&u, out, sizeof out);
  CHECK_STR(out, want);
}

/* A bad URL: refused, the message holds `why` and the form, and not the
 * secret (when given). */
static void refused(const char *text, const char *why, const char *secret) {
  lp_broker_url u;
  char err[512] = "";
  CHECK_EQ(lp_broker_url_parse(text, &u, err, sizeof err), -1);
  if (!strstr(err, why)) fprintf(stderr, "'%s': '%s' lacks '%s'\n", text, err, why);
  CHECK(strstr(err, why) != NULL);
  CHECK(strstr(err, FORM) != NULL);
  if (secret) CHECK(strstr(err, secret) == NULL);
}

static void good(void) {
  lp_broker_url u = parsed("redis://example.org:7000/3");
  CHECK_STR(u.host, "example.org");
  CHECK_EQ(u.port, 7000);
  CHECK_EQ(u.db, 3);
  CHECK_STR(u.user, "");
  CHECK_STR(u.password, "");

  u = parsed("redis://localhost"); /* the defaults */
  CHECK_STR(u.host, "localhost");
  CHECK_EQ(u.port, 6379);
  CHECK_EQ(u.db, 0);

  u = parsed("redis://10.0.0.7:1/");
  CHECK_STR(u.host, "10.0.0.7");
  CHECK_EQ(u.port, 1);
  CHECK_EQ(u.db, 0);

  u = parsed("redis://127.0.0.1:65535/0");
  CHECK_EQ(u.port, 65535);

  u = parsed("redis://alice:s3cret@broker:6380/2");
  CHECK_STR(u.user, "alice");
  CHECK_STR(u.password, "s3cret");
  CHECK_STR(u.host, "broker");
  CHECK_EQ(u.port, 6380);
  CHECK_EQ(u.db, 2);

  u = parsed("redis://:onlypass@broker"); /* the default user */
  CHECK_STR(u.user, "");
  CHECK_STR(u.password, "onlypass");

  u = parsed("redis://onlypass@broker"); /* as redis-cli reads it: a password */
  CHECK_STR(u.user, "");
  CHECK_STR(u.password, "onlypass");

  u = parsed("redis://us%40er:p%3Aa%2Fs%25s%20w@h:1"); /* %-encoded */
  CHECK_STR(u.user, "us@er");
  CHECK_STR(u.password, "p:a/s%s w");

  u = parsed("redis://bob:p@ss/w:rd@h:2/5"); /* '@' and '/' unencoded in a password */
  CHECK_STR(u.user, "bob");
  CHECK_STR(u.password, "p@ss/w:rd");
  CHECK_STR(u.host, "h");
  CHECK_EQ(u.port, 2);
  CHECK_EQ(u.db, 5);

  u = parsed("redis://[::1]:6390/1");
  CHECK_STR(u.host, "::1");
  CHECK_EQ(u.port, 6390);
  CHECK_EQ(u.db, 1);

  u = parsed("redis://u:p@[fe80::1:2]");
  CHECK_STR(u.host, "fe80::1:2");
  CHECK_EQ(u.port, 6379);

  u = parsed("redis://my-host_1.local:6379");
  CHECK_STR(u.host, "my-host_1.local");
}

static void shown(void) {
  shows("redis://localhost", "redis://localhost:6379");
  shows("redis://alice:s3cret@broker:6380/2", "redis://alice@broker:6380/2");
  shows("redis://:s3cret@broker:6380", "redis://broker:6380");
  shows("redis://[::1]:7000", "redis://[::1]:7000");
  shows("redis://h:1/0", "redis://h:1");

  char small[12];
  lp_broker_url u = parsed("redis://a-long-host-name:6379");
  lp_broker_url_show(&u, small, sizeof small); /* cut, terminated */
  CHECK_EQ(strlen(small), sizeof small - 1);
}

static void bad(void) {
  refused("", "it is empty", NULL);
  refused("localhost:6379", "does not start with redis://", NULL);
  refused("http://localhost:6379", "the scheme is 'http', not redis", NULL);
  refused("rediss://u:topsecret@h:6379", "rediss:// (TLS) is not supported by hiredis 0.14",
          "topsecret");
  refused("rediss://h:6379", "SSH or stunnel tunnel", NULL);
  refused("redis://", "the host is empty", NULL);
  refused("redis://:6379", "the host is empty", NULL);
  refused("redis://u:topsecret@:6379", "the host is empty", "topsecret");
  refused("redis://[]:6379", "the host is empty", NULL);
  refused("redis://h:0", "the port must be a number from 1 to 65535, got '0'", NULL);
  refused("redis://h:65536", "got '65536'", NULL);
  refused("redis://h:99999999999999999999", "the port must be a number", NULL);
  refused("redis://h:abc", "got 'abc'", NULL);
  refused("redis://h:", "got ''", NULL);
  refused("redis://h:-1", "got '-1'", NULL);
  refused("redis://h:63x79", "got '63x79'", NULL);
  refused("redis://h:6379 ", "got '6379 '", NULL);
  refused("redis://u:topsecret@h:12ab/1", "got '12ab'", "topsecret");
  refused("redis://h:6379/x", "the db must be a number, got 'x'", NULL);
  refused("redis://h:6379/-1", "the db must be a number", NULL);
  refused("redis://h:6379/1/2", "unexpected '/2' at the end", NULL);
  refused("redis://h:6379/1?timeout=3", "unexpected '?timeout=3' at the end", NULL);
  refused("redis://h:6379/0 ", "unexpected ' ' at the end", NULL);
  refused("redis://h o:6379", "the host cannot hold ' '", NULL);
  refused("redis://::1:6379", "an IPv6 address goes in brackets", NULL);
  refused("redis://[::1:6379", "has no closing ']'", NULL);
  refused("redis://[zz::1]:6379", "is not an IPv6 address", NULL);
  refused("redis://[::1]x", "unexpected 'x' at the end", NULL);
  refused("redis://u:pa%zzword@h", "the password has a bad %-escape", "pa%zzword");
  refused("redis://u:topsecret%4@h", "the password has a bad %-escape", "topsecret");
  refused("redis://u%g1:pw@h", "the user has a bad %-escape", NULL);
  refused("redis://alice:@h", "user 'alice' has no password", NULL);

  char many[301], longer[600];
  memset(many, 'a', 300);
  many[300] = '\0';
  snprintf(longer, sizeof longer, "redis://%s:1", many);
  refused(longer, "the host is longer than 255 bytes", NULL);
  snprintf(longer, sizeof longer, "redis://u:%s@h:1", many);
  refused(longer, "the password is longer than 255 bytes", NULL);

  /* A message cut to a small buffer is still a string. */
  lp_broker_url u;
  char err[16];
  CHECK_EQ(lp_broker_url_parse("redis://h:0", &u, err, sizeof err), -1);
  CHECK_EQ(strlen(err), sizeof err - 1);
}

int main(void) {
  good();
  shown();
  bad();
  return check_report("test_broker_url");
}
