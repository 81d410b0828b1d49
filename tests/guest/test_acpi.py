"""ACPI through our BIOS, as a guest sees it: the tables it finds, the PM block it drives.

The disk's boot code (real mode) finds the RSDP in 0xE0000-0xFFFFF, checks
every checksum on the way RSDP -> RSDT -> FADT/MADT -> DSDT, finds the MP
floating pointer in the EBDA, reads the PM timer, waits for the power button's
SCI (IRQ 9 through the 8259), then writes SLP_TYP(S5) | SLP_EN to PM1a_CNT.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from qemu_lite import Machine

GUEST = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ah, 0x42                ; the rest of the program: 16 sectors to 0x7E00
    mov si, dap
    int 0x13
    jc fail
    jmp main
dap: db 16, 0
    dw 16
    dw 0x7E00, 0
    dq 1

fail:
    mov si, msg_fail
    call print
    mov al, 1
    out 0xF4, al
    cli
    hlt

print:                          ; DS:SI, through INT 10h (our BIOS mirrors it to COM1)
    push ax
    push bx
.next:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0E
    xor bx, bx
    int 0x10
    jmp .next
.done:
    pop bx
    pop ax
    ret
msg_fail: db "FAILED", 13, 10, 0
times 510 - ($ - $$) db 0
    dw 0xAA55

puthex:                         ; EAX as 8 hex digits
    push eax
    push bx
    push cx
    mov cx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    mov ah, 0x0E
    xor bx, bx
    int 0x10
    pop eax
    loop .digit
    pop cx
    pop bx
    pop eax
    ret

%macro SAY 1+
    jmp %%over
%%str: db %1, 0
%%over:
    mov si, %%str
    call print
%endmacro

; ES:DI = a linear address EAX (below 1 MiB).
linear:
    push eax
    shr eax, 4
    mov es, ax
    mov eax, [esp]
    and ax, 0x0F
    mov di, ax
    pop eax
    ret

; Sum ECX bytes at linear EAX: ZF set if they sum to 0 (a valid checksum).
checksum:
    push eax
    push ecx
    push di
    push es
    push bx
    call linear
    xor bl, bl
.add:
    add bl, [es:di]
    inc di
    jnz .nowrap
    mov di, es
    add di, 0x1000
    mov es, di
    xor di, di
.nowrap:
    dec ecx
    jnz .add
    mov [csum], bl
    pop bx
    pop es
    pop di
    pop ecx
    pop eax
    cmp byte [csum], 0
    ret

; Checks the table at linear EAX: signature EDX, length, checksum.  Keeps EAX.
check_table:
    push eax
    call linear
    cmp [es:di], edx
    jne fail
    mov ecx, [es:di + 4]
    call checksum
    jnz fail
    pop eax
    ret

main:
    ; The RSDP: on a 16-byte boundary in E000:0000-F000:FFFF.
    mov bx, 0xE000
.scan:
    mov es, bx
    cmp dword [es:0], 'RSD '
    jne .step
    cmp dword [es:4], 'PTR '
    je .found
.step:
    inc bx
    jnz .scan
    SAY "no RSDP", 13, 10
    mov al, 0x10
    out 0xF4, al
    cli
    hlt
.found:
    movzx eax, bx
    shl eax, 4
    mov [rsdp], eax
    mov ecx, 20
    call checksum
    jnz fail
    mov ecx, 36
    call checksum
    jnz fail
    SAY "RSDP at "
    mov eax, [rsdp]
    call puthex
    SAY " revision "
    call linear
    movzx eax, byte [es:di + 15]
    call puthex
    SAY 13, 10

    ; RSDT -> each table.
    mov eax, [rsdp]
    call linear
    mov eax, [es:di + 16]
    mov edx, 'RSDT'
    call check_table
    mov [rsdt], eax
    call linear
    mov ecx, [es:di + 4]
    sub ecx, 36
    shr ecx, 2
    add di, 36
.entry:
    push ecx
    push di
    push es
    mov eax, [es:di]
    call linear
    mov edx, [es:di]
    mov [sig], edx
    call check_table
    SAY "table "
    mov si, sig
    call print
    SAY " ok", 13, 10
    cmp edx, 'FACP'
    jne .not_fadt
    mov [fadt], eax
.not_fadt:
    cmp edx, 'APIC'
    jne .next
    mov [madt], eax
.next:
    pop es
    pop di
    pop ecx
    add di, 4
    loop .entry

    ; FADT: the DSDT with \_S5, and the PM block.
    mov eax, [fadt]
    test eax, eax
    jz fail
    call linear
    mov eax, [es:di + 40]
    mov edx, 'DSDT'
    call check_table
    push eax
    call linear
    mov ecx, [es:di + 4]
.s5:
    cmp dword [es:di], '_S5_'
    je .s5_found
    inc di
    loop .s5
    jmp fail
.s5_found:
    SAY "DSDT has _S5", 13, 10
    pop eax
    mov eax, [fadt]
    call linear
    mov eax, [es:di + 56]
    mov [pm1_evt], ax
    mov eax, [es:di + 64]
    mov [pm1_cnt], ax
    mov eax, [es:di + 76]
    mov [pm_tmr], ax
    SAY "SCI IRQ "
    movzx eax, word [es:di + 46]
    call puthex
    SAY " PM1a_EVT "
    movzx eax, word [pm1_evt]
    call puthex
    SAY " PM1a_CNT "
    movzx eax, word [pm1_cnt]
    call puthex
    SAY " PM_TMR "
    movzx eax, word [pm_tmr]
    call puthex
    SAY 13, 10

    ; MADT: count its Local APIC and IOAPIC entries.
    mov eax, [madt]
    call linear
    mov ecx, [es:di + 4]
    sub ecx, 44
    add di, 44
    xor bx, bx                  ; BL = Local APICs, BH = IOAPICs
.madt:
    mov al, [es:di]
    cmp al, 0
    jne .not_lapic
    inc bl
.not_lapic:
    cmp al, 1
    jne .not_ioapic
    inc bh
.not_ioapic:
    movzx eax, byte [es:di + 1]
    add di, ax
    sub ecx, eax
    ja .madt
    SAY "MADT: local APICs "
    movzx eax, bl
    call puthex
    SAY " IOAPICs "
    movzx eax, bh
    call puthex
    SAY 13, 10

    ; The MP floating pointer in the EBDA's first KiB, and its table.
    push ds
    pop es
    mov ax, [0x40E]
    mov es, ax
    xor di, di
.mp:
    cmp dword [es:di], '_MP_'
    je .mp_found
    add di, 16
    cmp di, 0x400
    jb .mp
    jmp fail
.mp_found:
    mov ax, es
    movzx eax, ax
    shl eax, 4
    movzx edx, di
    add eax, edx
    mov ecx, 16
    call checksum
    jnz fail
    mov eax, [es:di + 4]
    mov edx, 'PCMP'
    push eax
    call linear
    movzx ecx, word [es:di + 4]
    pop eax
    cmp dword [es:di], edx
    jne fail
    call checksum
    jnz fail
    SAY "MP table entries "
    movzx eax, word [es:di + 34]
    call puthex
    SAY 13, 10

    ; The PM timer moves.
    mov dx, [pm_tmr]
    in eax, dx
    mov ebx, eax
    mov cx, 1000
.spin:
    in eax, dx
    loop .spin
    sub eax, ebx
    and eax, 0x00FFFFFF
    jz fail
    SAY "PM timer advances", 13, 10

    ; The power button: SCI on IRQ 9 = the slave 8259's IRQ 1 (vector 71h).
    xor ax, ax
    mov es, ax
    mov word [es:0x71 * 4], sci_handler
    mov word [es:0x71 * 4 + 2], 0
    in al, 0xA1
    and al, ~0x02
    out 0xA1, al
    mov dx, [pm1_evt]
    add dx, 2
    mov ax, 0x0100              ; PWRBTN_EN
    out dx, ax
    SAY "waiting for the power button", 13, 10
    sti
.wait:
    hlt
    cmp byte [pressed], 0
    je .wait
    cli
    SAY "power button pressed", 13, 10

    ; S5: SLP_TYP 0 (the _S5 package's value) | SLP_EN, SCI_EN kept.
    mov dx, [pm1_cnt]
    mov ax, 0x2001
    out dx, ax
    SAY "still running after S5", 13, 10
    jmp fail

sci_handler:
    push ax
    push dx
    mov dx, [cs:pm1_evt]
    in ax, dx
    test ax, 0x0100
    jz .eoi
    mov ax, 0x0100              ; write 1 to clear PWRBTN_STS
    out dx, ax
    mov byte [cs:pressed], 1
.eoi:
    mov al, 0x20
    out 0xA0, al
    out 0x20, al
    pop dx
    pop ax
    iret

align 4
rsdp: dd 0
rsdt: dd 0
fadt: dd 0
madt: dd 0
sig: dd 0
    db 0
pm1_evt: dw 0
pm1_cnt: dw 0
pm_tmr: dw 0
pressed: db 0
csum: db 0
times 512 * 17 - ($ - $$) db 0
"""


def _boot(assemble, tmp_path, *, acpi: bool = True, deterministic: bool = False):
    disk = tmp_path / "acpi.img"
    disk.write_bytes(assemble(GUEST).ljust(512 * 64, b"\0"))
    out = bytearray()
    waiting = threading.Event()

    def listen(data: bytes) -> None:
        out.extend(data)
        if b"waiting for the power button" in out:
            waiting.set()

    with Machine(disk, memory="32M", vga="none", acpi=acpi, deterministic=deterministic) as m:
        m.board.com1.add_output_listener(listen)

        def press() -> None:  # another thread, as QMP's system_powerdown would
            if waiting.wait(timeout=60):
                m.powerdown()

        presser = threading.Thread(target=press, daemon=True)
        if acpi:
            presser.start()
        result = m.run(timeout=60)
        waiting.set()
    return result, out.decode(errors="replace")


def test_guest_finds_the_tables_and_powers_off_after_the_power_button(assemble, tmp_path):
    result, text = _boot(assemble, tmp_path)
    assert "RSDP at 000E0000 revision 00000002" in text, text
    for table in ("FACP", "APIC"):
        assert f"table {table} ok" in text, text
    assert "DSDT has _S5" in text
    assert "SCI IRQ 00000009 PM1a_EVT 00000600 PM1a_CNT 00000604 PM_TMR 00000608" in text
    assert "MADT: local APICs 00000001 IOAPICs 00000001" in text
    assert "MP table entries 00000017" in text, text  # CPU, 2 buses, IOAPIC, 17 INTs, 2 LINTs
    assert "PM timer advances" in text
    assert "power button pressed" in text
    assert "still running" not in text and "FAILED" not in text
    assert result.reason == "powered-off", (result, text)


def test_deterministic_machine_powers_off_the_same_way(assemble, tmp_path):
    result, text = _boot(assemble, tmp_path, deterministic=True)
    assert "power button pressed" in text and result.reason == "powered-off", (result, text)


def test_machine_without_acpi_has_no_tables_and_no_power_button(assemble, tmp_path):
    result, text = _boot(assemble, tmp_path, acpi=False)
    assert "no RSDP" in text, text
    assert result.reason == "exit" and result.exit_status == 0x21
    with Machine(memory="16M", vga="none", acpi=False) as m:
        try:
            m.powerdown()
        except RuntimeError as exc:
            assert "no ACPI power button" in str(exc)
        else:
            raise AssertionError("powerdown() without ACPI did not refuse")


def test_cli_no_acpi_leaves_the_tables_out(assemble, tmp_path):
    disk = tmp_path / "acpi.img"
    disk.write_bytes(assemble(GUEST).ljust(512 * 64, b"\0"))
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "--no-acpi", "-vga", "none",
                           "--timeout", "60", "--snapshot", str(disk)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert "no RSDP" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0x21, proc.stderr
