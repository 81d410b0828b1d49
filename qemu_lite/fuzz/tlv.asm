; The bundled fuzzing example: a Multiboot guest that parses TLV records from memory.
;
; Layout: the input's length (a dword) at INPUT_LEN, its bytes at INPUT.  The guest
; reports it is ready on READY_PORT (the harness snapshots there and writes each input),
; parses, and leaves through isa-debug-exit with 0.  A corrupted guard word is its panic:
; a write to PANIC_PORT.
;
; Format: "TLV" then records {type, length, value[length]}:
;   'V' version (1 byte)
;   'N' name, copied into a 16-byte buffer followed by a guard word
;   'S' sum of the value bytes, kept in a dword
; The planted bug: the name's length check allows 17 bytes (off by one), so a 17-byte
; name overwrites the guard's first byte and the guest panics.

bits 32
org 0x100000

INPUT_LEN equ 0x1FFFFC
INPUT     equ 0x200000
INPUT_MAX equ 0x1000
READY_PORT equ 0x5F0
PANIC_PORT equ 0x5F1
GUARD equ 0x6B6F6F47

mb_header:
    dd 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    dd mb_header, mb_header, 0, 0, start

start:
    cli
    mov esp, 0x90000
    mov dx, READY_PORT
    out dx, al              ; ready: the harness snapshots here and writes the input
    jmp parse               ; a stop takes effect at a block boundary: end this one
parse:
    mov dword [guard], GUARD
    mov dword [version], 0
    mov dword [sum], 0
    mov esi, INPUT
    mov ecx, [INPUT_LEN]
    cmp ecx, INPUT_MAX
    ja finish
    lea ebp, [esi + ecx]    ; end of input
    cmp ecx, 3
    jb finish
    cmp byte [esi], 'T'     ; the magic, a byte at a time
    jne finish
    cmp byte [esi + 1], 'L'
    jne finish
    cmp byte [esi + 2], 'V'
    jne finish
    add esi, 3

record:
    lea eax, [esi + 2]
    cmp eax, ebp
    ja finish
    movzx eax, byte [esi]   ; type
    movzx ecx, byte [esi + 1] ; length
    add esi, 2
    lea edx, [esi + ecx]
    cmp edx, ebp
    ja finish               ; the value runs past the input
    cmp al, 'V'
    je rec_version
    cmp al, 'N'
    je rec_name
    cmp al, 'S'
    je rec_sum
next:
    add esi, ecx
    jmp record

rec_version:
    cmp ecx, 1
    jne next
    movzx eax, byte [esi]
    mov [version], eax
    jmp next

rec_sum:
    xor edx, edx
    xor ebx, ebx
.add:
    cmp edx, ecx
    jae .done
    movzx eax, byte [esi + edx]
    add ebx, eax
    inc edx
    jmp .add
.done:
    add [sum], ebx
    jmp next

rec_name:
    cmp ecx, 17             ; BUG: the buffer holds 16
    ja next
    push esi
    push ecx
    mov edi, name
    rep movsb
    pop ecx
    pop esi
    cmp dword [guard], GUARD
    jne panic
    jmp next

panic:
    mov dx, PANIC_PORT
    mov al, 1
    out dx, al
    hlt

finish:
    mov al, 0
    out 0xF4, al
    hlt

align 4
version: dd 0
sum: dd 0
name: times 16 db 0
guard: dd 0
