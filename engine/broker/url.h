/*
 * url.h - a broker's address: redis://[user:password@]HOST:PORT[/DB].
 */
#ifndef LP_BROKER_URL_H
#define LP_BROKER_URL_H

#include <stddef.h>

typedef struct lp_broker_url {
  char host[256];     /* a name, an IPv4 address, or an IPv6 address without brackets */
  int port;           /* 1..65535; 6379 when the URL has none */
  int db;             /* 0 when the URL has none */
  char user[128];     /* "" when the URL has none (AUTH with a password alone) */
  char password[256]; /* "" when the URL has none (no AUTH) */
} lp_broker_url;

/* Parses url into *out: 0, or -1 with a message for the user in err (size
 * n) that says what is wrong and what a right URL looks like. User and
 * password may be %-encoded. */
int lp_broker_url_parse(const char *url, lp_broker_url *out, char *err, size_t n);

/* Writes the URL without its password ("redis://user@host:port/db") into
 * out: how messages and `luapool status` name a broker. */
void lp_broker_url_show(const lp_broker_url *u, char *out, size_t n);

#endif
