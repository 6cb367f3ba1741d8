/*
 * clients/gistd-http/request.c — the bodies of /v1/chat/completions and /v1/completions read
 * and checked, and the JSON objects the replies are made of.
 *
 * Every field is checked before gistd hears of the request: a bad one is a 400 that names
 * it. Fields the gateway does not implement are refused when they would change the answer
 * (n > 1, logprobs, tools, penalties) and ignored when they would not (user, stream_options).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clients/gistd-http/http.h"

void gh_req_free(gh_req_t *r)
{
    if (!r)
        return;
    json_decref(r->body);
    json_decref(r->keep);
    free(r->msg);
    free(r->hash);
    free(r);
}

static int role_of(const char *s)
{
    if (!strcmp(s, "system") || !strcmp(s, "developer"))
        return GC_ROLE_SYSTEM;
    if (!strcmp(s, "user"))
        return GC_ROLE_USER;
    if (!strcmp(s, "assistant"))
        return GC_ROLE_ASSISTANT;
    return -1;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined
 * into a string that *keep owns). */
static int content_of(json_t *v, size_t i, const char **text, size_t *len, json_t **keep,
                      err_info_t *e)
{
    if (json_is_null(v) || !v) {
        *text = "";
        *len = 0;
        return 0;
    }
    if (json_is_string(v)) {
        *text = json_string_value(v);
        *len = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v))
        return err_set(e, ERR_INVAL,
                       "messages[%zu].content must be a string or an array of "
                       "text parts",
                       i);
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(v, k, part)
    {
        json_t *ty = json_object_get(part, "type"), *tx = json_object_get(part, "text");
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "text") || !json_is_string(tx))
            return err_set(e, ERR_INVAL,
                           "messages[%zu].content[%zu]: only text parts "
                           "({\"type\": \"text\", \"text\": ...}) are supported",
                           i, k);
        total += json_string_length(tx);
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return err_set(e, ERR_NOMEM, "out of memory");
    size_t o = 0;
    json_array_foreach(v, k, part)
    {
        json_t *tx = json_object_get(part, "text");
        memcpy(buf + o, json_string_value(tx), json_string_length(tx));
        o += json_string_length(tx);
    }
    buf[o] = 0;
    *keep = json_stringn_nocheck(buf, o);
    free(buf);
    if (!*keep)
        return err_set(e, ERR_NOMEM, "out of memory");
    *text = json_string_value(*keep);
    *len = o;
    return 0;
}

static int parse_messages(gh_req_t *r, json_t *msgs, err_info_t *e)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return err_set(e, ERR_INVAL, "'messages' must be a non-empty array");
    const size_t n = json_array_size(msgs);
    if (n > 100000)
        return err_set(e, ERR_INVAL, "'messages' holds %zu messages; at most 100000", n);
    r->msg = calloc(n, sizeof *r->msg);
    r->hash = calloc(n, sizeof *r->hash);
    json_t *keep = r->keep = json_array(); /* joined contents, as long as the request */
    if (!r->msg || !r->hash || !keep)
        return err_set(e, ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        if (!json_is_object(m))
            return err_set(e, ERR_INVAL, "messages[%zu] must be an object", i);
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role))
            return err_set(e, ERR_INVAL, "messages[%zu].role must be a string", i);
        const int ro = role_of(json_string_value(role));
        if (ro < 0)
            return err_set(e, ERR_INVAL,
                           "messages[%zu].role '%.40s' is not one of system, user, assistant", i,
                           json_string_value(role));
        if (json_object_get(m, "tool_calls") || json_object_get(m, "function_call"))
            return err_set(e, ERR_INVAL, "messages[%zu]: tool calls are not supported", i);
        json_t *joined = NULL;
        int rc = content_of(json_object_get(m, "content"), i, &r->msg[i].text, &r->msg[i].len,
                            &joined, e);
        if (joined)
            json_array_append_new(keep, joined);
        if (rc)
            return rc;
        if (strlen(r->msg[i].text) != r->msg[i].len)
            return err_set(e, ERR_INVAL, "messages[%zu].content holds a NUL character", i);
        r->msg[i].role = ro;
        r->hash[i] = gh_message_hash(ro, r->msg[i].text, r->msg[i].len);
    }
    r->n_msg = (uint32_t)n;
    return 0;
}

static int parse_prompt(gh_req_t *r, json_t *p, err_info_t *e)
{
    if (json_is_array(p) && json_array_size(p) == 1)
        p = json_array_get(p, 0);
    if (!json_is_string(p))
        return err_set(e, ERR_INVAL, "'prompt' must be a string (or an array of one string)");
    r->msg = calloc(1, sizeof *r->msg);
    r->hash = calloc(1, sizeof *r->hash);
    if (!r->msg || !r->hash)
        return err_set(e, ERR_NOMEM, "out of memory");
    r->msg[0].role = GC_ROLE_NONE;
    r->msg[0].text = json_string_value(p);
    r->msg[0].len = json_string_length(p);
    if (strlen(r->msg[0].text) != r->msg[0].len)
        return err_set(e, ERR_INVAL, "'prompt' holds a NUL character");
    r->n_msg = 1;
    return 0;
}

/* A number field in [lo, hi] (absent: leaves *out). */
static int number(json_t *body, const char *key, double lo, double hi, double *out, err_info_t *e)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi)
        return err_set(e, ERR_INVAL, "'%s' must be a number from %g to %g", key, lo, hi);
    *out = json_number_value(v);
    return 0;
}

static int integer(json_t *body, const char *key, json_int_t lo, json_int_t hi, json_int_t *out,
                   err_info_t *e)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return err_set(e, ERR_INVAL, "'%s' must be a whole number from %lld to %lld", key,
                       (long long)lo, (long long)hi);
    *out = json_integer_value(v);
    return 0;
}

/* Set to something that asks for a feature: true, a non-zero number, a non-empty text, array
 * or object. */
static bool truthy(json_t *v)
{
    return json_is_true(v) || (json_is_number(v) && json_number_value(v) != 0) ||
           (json_is_string(v) && json_string_length(v)) ||
           (json_is_array(v) && json_array_size(v)) || (json_is_object(v) && json_object_size(v));
}

static int parse_stop(gh_req_t *r, json_t *v, err_info_t *e)
{
    if (!v || json_is_null(v))
        return 0;
    json_t *one = json_is_string(v) ? v : NULL;
    const size_t n = one ? 1 : json_is_array(v) ? json_array_size(v) : 5;
    if (n > 4)
        return err_set(e, ERR_INVAL, "'stop' must be a string or an array of up to 4 strings");
    for (size_t i = 0; i < n; i++) {
        json_t *s = one ? one : json_array_get(v, i);
        if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) > 256 ||
            strlen(json_string_value(s)) != json_string_length(s))
            return err_set(e, ERR_INVAL, "'stop' strings must be 1 to 256 bytes of text");
        r->stop[r->n_stop++] = json_string_value(s);
    }
    return 0;
}

int gh_req_parse(gh_t *g, bool chat, const char *data, size_t len, const char *bind_header,
                 const gc_model_info_t *model, const char *model_id, gh_req_t **out, err_info_t *e)
{
    json_error_t je;
    json_t *body = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!body)
        return err_set(e, ERR_FORMAT, "the body is not valid JSON: %s (line %d, column %d)",
                       je.text, je.line, je.column);
    gh_req_t *r = calloc(1, sizeof *r);
    if (!r) {
        json_decref(body);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    r->body = body;
    r->chat = chat;
    int rc = 0;
    if (!json_is_object(body)) {
        rc = err_set(e, ERR_INVAL, "the body must be a JSON object");
        goto fail;
    }
    json_t *m = json_object_get(body, "model");
    if (m && !json_is_null(m)) {
        if (!json_is_string(m)) {
            rc = err_set(e, ERR_INVAL, "'model' must be a string");
            goto fail;
        }
        if (strcmp(json_string_value(m), model_id)) {
            rc = err_set(e, ERR_INVAL,
                         "the model '%.100s' does not exist; this gateway "
                         "serves '%s' (GET /v1/models)",
                         json_string_value(m), model_id);
            goto fail;
        }
    }
    snprintf(r->model, sizeof r->model, "%s", model_id);
    rc = chat ? parse_messages(r, json_object_get(body, "messages"), e)
              : parse_prompt(r, json_object_get(body, "prompt"), e);
    if (rc)
        goto fail;

    json_t *st = json_object_get(body, "stream");
    if (st && !json_is_null(st) && !json_is_boolean(st)) {
        rc = err_set(e, ERR_INVAL, "'stream' must be true or false");
        goto fail;
    }
    r->stream = json_is_true(st);

    const json_int_t ctx = model && model->n_ctx ? model->n_ctx : 1 << 20;
    json_int_t max_tokens = chat ? (ctx < 512 ? ctx : 512) : 16, n = 1, seed = -1, top_k = -1;
    double temp = -1, top_p = -1, min_p = -1, pen = 0, rep = -1;
    if ((rc = integer(body, "max_tokens", 1, ctx, &max_tokens, e)) ||
        (rc = integer(body, "max_completion_tokens", 1, ctx, &max_tokens, e)) ||
        (rc = integer(body, "n", 1, 1, &n, e)) ||
        (rc = integer(body, "seed", 0, INT64_MAX, &seed, e)) ||
        (rc = integer(body, "top_k", 0, model && model->n_vocab ? model->n_vocab : INT32_MAX,
                      &top_k, e)) ||
        (rc = number(body, "temperature", 0, 2, &temp, e)) ||
        (rc = number(body, "top_p", 0, 1, &top_p, e)) ||
        (rc = number(body, "min_p", 0, 1, &min_p, e)) ||
        (rc = number(body, "repeat_penalty", 0, 10, &rep, e)) ||
        (rc = number(body, "presence_penalty", 0, 0, &pen, e)) ||
        (rc = number(body, "frequency_penalty", 0, 0, &pen, e)) ||
        (rc = parse_stop(r, json_object_get(body, "stop"), e)))
        goto fail;
    static const char *const unsupported[] = {"logprobs", "top_logprobs", "tools",   "functions",
                                              "echo",     "suffix",       "best_of", "logit_bias"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        json_t *v = json_object_get(body, unsupported[i]);
        const bool one =
            !strcmp(unsupported[i], "best_of") && json_is_integer(v) && json_integer_value(v) == 1;
        if (truthy(v) && !one) {
            rc = err_set(e, ERR_INVAL, "'%s' is not supported by gistd-http", unsupported[i]);
            goto fail;
        }
    }
    r->max_tokens = (uint32_t)max_tokens;
    gc_sampling_default(&r->sampling);
    if (temp >= 0)
        r->sampling.temp = (float)temp;
    if (top_p >= 0)
        r->sampling.top_p = (float)top_p;
    if (min_p >= 0)
        r->sampling.min_p = (float)min_p;
    if (top_k >= 0)
        r->sampling.top_k = (int32_t)top_k;
    if (rep >= 0)
        r->sampling.repeat_penalty = (float)rep;
    if (seed >= 0)
        r->sampling.seed = (uint64_t)seed;

    json_t *b = json_object_get(body, "session");
    if (b && !json_is_null(b)) {
        if (json_is_integer(b) && json_integer_value(b) > 0 &&
            json_integer_value(b) <= UINT32_MAX) {
            snprintf(r->bind, sizeof r->bind, "%lld", (long long)json_integer_value(b));
        } else if (json_is_string(b) && json_string_length(b) > 0 &&
                   json_string_length(b) < sizeof r->bind &&
                   strlen(json_string_value(b)) == json_string_length(b)) {
            snprintf(r->bind, sizeof r->bind, "%s", json_string_value(b));
        } else {
            rc = err_set(e, ERR_INVAL, "'session' must be a session id or a name of 1 to %zu bytes",
                         sizeof r->bind - 1);
            goto fail;
        }
    } else if (bind_header && *bind_header) {
        if (strlen(bind_header) >= sizeof r->bind) {
            rc = err_set(e, ERR_INVAL,
                         "X-Gistd-Session must be a session id or a name of 1 to "
                         "%zu bytes",
                         sizeof r->bind - 1);
            goto fail;
        }
        snprintf(r->bind, sizeof r->bind, "%s", bind_header);
    }
    if (r->bind[0] && !chat) {
        rc = err_set(e, ERR_INVAL, "a session binding is for /v1/chat/completions only");
        goto fail;
    }
    *out = r;
    return 0;
fail:
    gh_req_free(r);
    return rc;
}

/* ------------------------------------------------------------------ replies */

unsigned gh_status_for(int rc)
{
    switch (rc) {
    case ERR_INVAL:
    case ERR_FORMAT:
    case ERR_RANGE:
    case ERR_BUDGET:
    case ERR_CONTEXT:
    case ERR_EXISTS:
        return 400;
    case ERR_NOTFOUND:
        return 404;
    case ERR_BUSY:
        return 409;
    case ERR_TOOBIG:
        return 413;
    case ERR_RATE:
        return 429;
    case ERR_INTERNAL:
        return 500;
    default:
        return 503; /* not reached, not answering, out of room: try again later */
    }
}

json_t *gh_error_json(unsigned status, const char *message)
{
    const char *type = status >= 500 ? "server_error" : "invalid_request_error";
    const char *code = status == 400   ? "invalid_value"
                       : status == 404 ? "not_found"
                       : status == 405 ? "method_not_allowed"
                       : status == 409 ? "session_busy"
                       : status == 413 ? "request_too_large"
                       : status == 429 ? "rate_limited"
                       : status == 503 ? "gistd_unavailable"
                                       : "internal_error";
    return json_pack("{s:{s:s,s:s,s:s}}", "error", "message", message, "type", type, "code", code);
}

void gh_response_id(gh_t *g, bool chat, char *buf, size_t cap)
{
    const uint64_t n = __atomic_add_fetch(&g->next_id, 1, __ATOMIC_RELAXED);
    snprintf(buf, cap, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)time(NULL),
             (unsigned long long)n);
}

const char *gh_finish_reason(gc_stop_t reason)
{
    return reason == GC_STOP_LENGTH ? "length" : "stop";
}

json_t *gh_usage_json(const gh_outcome_t *o)
{
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", (json_int_t)o->prompt_tokens,
                     "completion_tokens", (json_int_t)o->completion_tokens, "total_tokens",
                     (json_int_t)o->prompt_tokens + o->completion_tokens, "prompt_tokens_details",
                     "cached_tokens", (json_int_t)o->cached_tokens);
}

json_t *gh_extension_json(const gh_outcome_t *o)
{
    return json_pack("{s:i,s:I,s:i,s:I,s:i}", "session", (json_int_t)o->session, "kv_bytes",
                     (json_int_t)o->kv_bytes, "compactions", (json_int_t)o->compactions,
                     "bytes_freed", (json_int_t)o->bytes_freed, "prefilled_tokens",
                     (json_int_t)o->prefilled_tokens);
}

json_t *gh_chunk_json(gh_t *g, const gh_req_t *r, const char *id, long created, const char *text,
                      size_t len, bool first, const gh_outcome_t *o)
{
    json_t *choice;
    if (r->chat) {
        json_t *delta = o ? json_object() : json_pack("{s:s%}", "content", text, len);
        if (delta && first)
            json_object_set_new(delta, "role", json_string("assistant"));
        choice = json_pack("{s:i,s:o,s:n}", "index", 0, "delta", delta, "logprobs");
    } else {
        choice = json_pack("{s:i,s:s%,s:n}", "index", 0, "text", text, len, "logprobs");
    }
    if (!choice)
        return NULL;
    json_object_set_new(choice, "finish_reason",
                        o ? json_string(gh_finish_reason(o->reason)) : json_null());
    json_t *c = json_pack("{s:s,s:s,s:i,s:s,s:[o]}", "id", id, "object",
                          r->chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)created, "model", r->model, "choices", choice);
    if (c && o) {
        json_object_set_new(c, "usage", gh_usage_json(o));
        json_object_set_new(c, "gistd", gh_extension_json(o));
    }
    return c;
}
