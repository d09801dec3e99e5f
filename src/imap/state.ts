// Per-mailbox values that must outlive the process (the Graph delta link), in the spool's mailbox_state table.
import type { Clock } from '../core/clock.js';
import type { Db } from '../spool/db.js';

export class MailboxState {
  private readonly getStmt;
  private readonly putStmt;
  private readonly delStmt;

  constructor(
    db: Db,
    private readonly name: string,
    private readonly clock: Clock,
  ) {
    this.getStmt = db.prepare(`SELECT value FROM mailbox_state WHERE name = ? AND key = ?`).pluck();
    this.putStmt = db.prepare(
      `INSERT INTO mailbox_state (name, key, value, updated_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (name, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
    );
    this.delStmt = db.prepare(`DELETE FROM mailbox_state WHERE name = ? AND key = ?`);
  }

  get(key: string): string | undefined {
    const v = this.getStmt.get(this.name, key);
    return typeof v === 'string' ? v : undefined;
  }

  set(key: string, value: string): void {
    this.putStmt.run(this.name, key, value, this.clock.now());
  }

  delete(key: string): void {
    this.delStmt.run(this.name, key);
  }
}
