#!/usr/bin/zsh -f
# SPDX-License-Identifier: MIT
#
# zsh-complete.zsh COMPLETION_DIR LINE
#
# Prints, one per line and sorted, the matches zsh's completion system offers for LINE (as if typed at a
# prompt followed by TAB), using the completion functions in COMPLETION_DIR. An interactive zsh runs on a
# pseudo-terminal (zsh/zpty); its rc file wraps compadd so that every match added is also printed, between
# two markers that TAB's widget prints around the completion. Nothing here sleeps: reads block on the
# pty until the end marker, and the caller kills this script at its deadline.

emulate -L zsh
zmodload zsh/zpty || exit 77

local dir=$1 line=$2
local tmp=$(mktemp -d) || exit 1
trap 'zpty -d capture 2>/dev/null; rm -rf -- $tmp' EXIT

cat >$tmp/.zshrc <<RC
PROMPT='' RPROMPT='' PS2=''
fpath=(${(q)dir} \$fpath)
autoload -Uz compinit && compinit -u -D
zstyle ':completion:*' insert-tab false
zstyle ':completion:*' list-grouped false
unsetopt beep

# Every match added is printed as "MATCH:<word>"; calls that only compute (-O, -A, -D) pass through.
compadd() {
    if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then
        builtin compadd "\$@"
        return \$?
    fi
    local -a __matches
    builtin compadd -O __matches "\$@"
    local w
    for w in \$__matches; do
        print -r -- "MATCH:\$w"
    done
    builtin compadd "\$@"
}

__capture() {
    print -r -- "CAPTURE-""BEGIN"
    zle complete-word
    print -r -- "CAPTURE-""END"
}
zle -N __capture
bindkey '^I' __capture
RC

zpty capture "ZDOTDIR=${(q)tmp} zsh -d -i"
zpty -w -n capture "$line"$'\t'

local out="" l
local -a matches
integer in_capture=0
while zpty -r capture l; do
    l=${${l//$'\r'/}%$'\n'}
    if [[ $l == *CAPTURE-END* ]]; then
        break
    fi
    if [[ $l == *CAPTURE-BEGIN* ]]; then
        in_capture=1
        continue
    fi
    if (( in_capture )) && [[ $l == *MATCH:* ]]; then
        matches+=("${l#*MATCH:}")
    fi
done

(( $#matches )) && print -rl -- ${(ou)matches}
exit 0
