// Who is signed in, and the names staff read (from the server's catalogue).
import { reactive } from 'vue'
import { api, naming } from './api.js'

export const session = reactive({ me: null, names: null, notice: '' })

export async function loadSession() {
  try {
    session.me = await api('GET', '/auth/v1/me', { what: '读取登录状态', quiet401: true })
    if (!session.names) session.names = await api('GET', '/auth/v1/names', { what: '读取名称表' })
  } catch {
    session.me = null
  }
  return session.me
}

export function clearSession(notice = '') {
  session.me = null
  session.notice = notice
}

const pick = (table, key) => (session.names && session.names[table]?.[key]) || key || '—'
export const levelName = (l) => (l ? pick('level_short', String(l)) : '未定级')
// The plan's levels, most severe first (the catalogue names each one the plan declares).
export const planLevels = () =>
  Object.keys(session.names?.level_short || { 1: 1, 2: 2, 3: 3 }).map(Number).sort((a, b) => a - b)
export const categoryName = (c) => (c ? pick('categories', c) : '—')
export const roleName = (r) => pick('roles', r)
naming.role = roleName
export const unitName = (u) => pick('units', u)
export const personName = (p) => pick('people', p)
export const obligationStateName = (s) => pick('obligation_states', s)
export const statementStateName = (s) => pick('statement_states', s)
export const statementKindName = (k) => pick('statement_kinds', k)
export const mediaTierName = (m) => pick('media_tiers', m)
export const matchName = (m) => pick('matches', m)
export const statusName = (s) =>
  ({ open: '处置中', resolved: '已办结', dismissed: '已排除（伪舆情）', archived: '已归档' })[s] || s

// Times as the bureau reads them: in its own time zone (YUQING_TIMEZONE), whatever the device's.
export function at(t) {
  if (!t) return '—'
  const zone = session.names?.timezone || 'Asia/Shanghai'
  return new Date(t).toLocaleString('zh-CN', { timeZone: zone, hour12: false })
}

// A session in use is renewed by the server once past half its life (GET /auth/v1/me);
// asking every five minutes keeps an open console signed in, and finds an ended one.
setInterval(() => {
  if (session.me) api('GET', '/auth/v1/me', { what: '续期登录' }).catch(() => {})
}, 5 * 60 * 1000)
