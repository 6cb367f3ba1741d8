/*
 * daemon/chat_tmpl.c — chat templates: how a turn of each role is wrapped, for the families
 * of the files people download, and which family a file's tokenizer.chat_template is.
 *
 * The Jinja text is not run: each family is told by its markers (ChatML's <|im_start|>,
 * Llama 3's <|start_header_id|>, Gemma's <start_of_turn>, Phi-3's <|end|> with
 * <|assistant|>, Zephyr's <|assistant|> without it, Llama 2 and Mistral's [INST]) and
 * rendered here, turn by turn, as those templates render a conversation. The beginning of
 * the text (BOS) is the tokenizer's, not the template's. Pure tables; any thread.
 */
#include <string.h>

#include "daemon/dmn_impl.h"

/* index: Gistd__Role (none, system, user, assistant) */
static const dmn_tmpl_t templates[] = {
    {.name = "none", .prefix = {"", "", "", ""}, .suffix = {"", "", "", ""}, .stop = NULL},
    {.name = "chatml",
     .prefix = {"", "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"},
     .suffix = {"", "<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"},
     .stop = "<|im_end|>"},
    {.name = "llama3",
     .prefix = {"", "<|start_header_id|>system<|end_header_id|>\n\n",
                "<|start_header_id|>user<|end_header_id|>\n\n",
                "<|start_header_id|>assistant<|end_header_id|>\n\n"},
     .suffix = {"", "<|eot_id|>", "<|eot_id|>", "<|eot_id|>"},
     .stop = "<|eot_id|>"},
    {.name = "llama2",
     .prefix = {"", "[INST] <<SYS>>\n", "[INST] ", " "},
     .suffix = {"", "\n<</SYS>>\n\n", " [/INST]", " </s>"},
     .stop = "</s>",
     .user_after_system = ""},
    {.name = "gemma",
     .prefix = {"", "<start_of_turn>user\n", "<start_of_turn>user\n", "<start_of_turn>model\n"},
     .suffix = {"", "\n\n", "<end_of_turn>\n", "<end_of_turn>\n"},
     .stop = "<end_of_turn>",
     .user_after_system = ""},
    {.name = "phi3",
     .prefix = {"", "<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     .suffix = {"", "<|end|>\n", "<|end|>\n", "<|end|>\n"},
     .stop = "<|end|>"},
    {.name = "zephyr",
     .prefix = {"", "<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     .suffix = {"", "</s>\n", "</s>\n", "</s>\n"},
     .stop = "</s>"},
    {.name = "plain",
     .prefix = {"", "System: ", "User: ", "Assistant: "},
     .suffix = {"", "\n", "\n", "\n"},
     .stop = "\nUser:"},
};

const dmn_tmpl_t *dmn_tmpl_find(const char *name)
{
    if (!name || !*name)
        return &templates[0];
    for (size_t i = 0; i < sizeof templates / sizeof templates[0]; i++)
        if (!strcmp(templates[i].name, name))
            return &templates[i];
    return NULL;
}

static bool has(const char *text, size_t len, const char *marker)
{
    return memmem(text, len, marker, strlen(marker)) != NULL;
}

const dmn_tmpl_t *dmn_tmpl_detect(const char *text, size_t len)
{
    /* the most specific markers first: a Llama 3 or Gemma template may mention [INST] in a
     * comment, Phi-3 and Zephyr share <|assistant|> */
    static const struct {
        const char *marker, *also, *family;
    } rules[] = {
        {"<|im_start|>", NULL, "chatml"},   {"<|start_header_id|>", NULL, "llama3"},
        {"<start_of_turn>", NULL, "gemma"}, {"<|assistant|>", "<|end|>", "phi3"},
        {"<|assistant|>", NULL, "zephyr"},  {"[INST]", NULL, "llama2"},
    };
    if (!text)
        return NULL;
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        if (has(text, len, rules[i].marker) && (!rules[i].also || has(text, len, rules[i].also)))
            return dmn_tmpl_find(rules[i].family);
    return NULL;
}
