/* common/keyfile.c — reading CURVE key files (see keyfile.h). */
#include "common/keyfile.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

bool key_z85_valid(const char *z)
{
    uint8_t raw[32];
    return z && strlen(z) == KEY_Z85_LEN && zmq_z85_decode(raw, z) != NULL;
}

void key_comment_cut(char *line)
{
    for (char *p = line; *p; p++)
        if (*p == '#' && (p == line || *(p - 1) == ' ' || *(p - 1) == '\t')) {
            *p = 0;
            return;
        }
}

int key_file_read(const char *path, char out[KEY_Z85_LEN + 1], err_info_t *e)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return err_set(e, ERR_IO, "cannot read the key file %s: %s", path, strerror(errno));
    char line[512];
    unsigned ln = 0;
    int rc = 1; /* 1: no key line yet */
    while (rc == 1 && fgets(line, sizeof line, f)) {
        ln++;
        key_comment_cut(line);
        char word[64];
        if (sscanf(line, "%63s", word) != 1)
            continue;
        if (!key_z85_valid(word)) {
            rc = err_set(e, ERR_FORMAT, "%s:%u: not a CURVE key (40 z85 characters)", path, ln);
        } else {
            memcpy(out, word, KEY_Z85_LEN + 1);
            rc = 0;
        }
    }
    fclose(f);
    if (rc == 1)
        rc = err_set(e, ERR_FORMAT, "%s holds no key (a line of 40 z85 characters)", path);
    return rc;
}
